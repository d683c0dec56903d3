import json

import numpy as np
import pytest

from clipsae.errors import ClipsaeError
from clipsae.store import ActivationStore, HookLayout, PartWriter, open_root, verify, write_store


def _acts(n, t=3, d=4, seed=0):
    return np.random.default_rng(seed).standard_normal((n, t, d)).astype(np.float32)


def test_write_store_round_trips_activations_keys_and_labels(tmp_path):
    acts = _acts(10)
    write_store(tmp_path / "s.zarr", {"resid.0": acts}, keys=[f"k{i}" for i in range(10)],
                labels=list(range(10)), attrs={"model": "synthetic"})
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert s.hooks == ["resid.0"]
    assert (s.n_images, s.n_tokens("resid.0"), s.d("resid.0")) == (10, 3, 4)
    assert list(s.keys()) == [f"k{i}" for i in range(10)]
    assert list(s.labels()) == list(range(10))
    np.testing.assert_array_equal(s.read("resid.0", slice(None)), acts)
    assert s.config["model"] == "synthetic"


def test_write_store_accepts_one_vector_per_image(tmp_path):
    write_store(tmp_path / "s.zarr", {"embed": _acts(5)[:, 0]}, keys=list("abcde"), attrs={"model": "m"})
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert s.read("embed", [4]).shape == (1, 1, 4)
    assert list(s.labels()) == [-1] * 5


def test_read_across_parts_follows_requested_order(tmp_path):
    a, b = _acts(6, seed=1), _acts(4, seed=2)
    write_store(tmp_path / "s.zarr", {"h": a}, keys=[f"a{i}" for i in range(6)], attrs={"model": "m"}, part="p0")
    write_store(tmp_path / "s.zarr", {"h": b}, keys=[f"b{i}" for i in range(4)], attrs={"model": "m"}, part="p1")
    s = ActivationStore.open(tmp_path / "s.zarr")
    both = np.concatenate([a, b])
    idx = [9, 0, 5, 6, -1, 3]
    np.testing.assert_array_equal(s.read("h", idx), both[idx])
    np.testing.assert_array_equal(s.read("h", slice(4, 8)), both[4:8])


def test_chunks_cover_every_row_once_in_any_order(tmp_path):
    acts = _acts(50, t=1, d=2)
    write_store(tmp_path / "s.zarr", {"h": acts}, keys=[str(i) for i in range(50)], attrs={"model": "m"})
    s = ActivationStore.open(tmp_path / "s.zarr")
    rows = [(c.start, c.stop, x) for c, x in s.iter_chunks("h", shuffle=True, seed=3)]
    got = np.concatenate([x for _, _, x in sorted(rows, key=lambda r: r[0])])
    np.testing.assert_array_equal(got, acts)


def test_chunks_have_the_sizes_docs_store_md_promises(tmp_path):
    from clipsae.store.layout import chunk_rows

    root = open_root(tmp_path / "s.zarr", {"model": "m", "hooks": {}}, {})
    w = PartWriter(root, "p", "src", [HookLayout("h", 257, 1024), HookLayout("c", 1, 1024)], "float16")
    # ViT-L-14 float16: 15 all-token images a chunk (7.9 MiB), 4,096 CLS rows (8 MiB).
    assert w._arrays["h"].rows_per_chunk == 15 and w._arrays["c"].rows_per_chunk == 4096
    # Fitted to known parts: 50 CLS images are one chunk of 50 rows; 1,000 all-token images 67 chunks of 15.
    assert chunk_rows(1, 768, 2, expected_images=50) == 50
    rows = chunk_rows(257, 1024, 2, expected_images=1000)
    assert rows == 15 and -(-1000 // rows) == 67


def test_incomplete_part_is_invisible_to_readers(tmp_path):
    write_store(tmp_path / "s.zarr", {"h": _acts(3)}, keys=list("abc"), attrs={"model": "m"}, part="p0")
    cfg = ActivationStore.open(tmp_path / "s.zarr").config
    root = open_root(tmp_path / "s.zarr", cfg, {})
    w = PartWriter(root, "p1", "src", [HookLayout("h", 3, 4)], "float32")
    w.append(["d"], [0], {"h": _acts(1)})
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert s.n_images == 3 and s.incomplete_parts == ["p1"]


def test_unreadable_part_metadata_is_a_problem_not_an_incomplete_part(tmp_path):
    # zarr replaces metadata files atomically, so a torn zarr.json means damage after the write.
    write_store(tmp_path / "s.zarr", {"h": _acts(3)}, keys=list("abc"), attrs={"model": "m"}, part="p0")
    meta = tmp_path / "s.zarr" / "parts" / "p0" / "zarr.json"
    meta.write_text(meta.read_text()[:20])
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert s.n_images == 0 and s.damaged_parts == ["p0"] and s.incomplete_parts == []
    assert verify(s).problems == ["part p0: its metadata (zarr.json) is unreadable"]
    from clipsae.store.info import format_summary, summarize

    summary = summarize(s)
    assert summary["parts_damaged"] == ["p0"] and "1 DAMAGED" in format_summary(summary)


def test_open_root_refuses_other_identity_naming_the_difference(tmp_path):
    write_store(tmp_path / "s.zarr", {"h": _acts(3)}, keys=list("abc"), attrs={"model": "A"})
    with pytest.raises(ClipsaeError, match="model: store has 'A', this run has 'B'"):
        write_store(tmp_path / "s.zarr", {"h": _acts(3)}, keys=list("abc"), attrs={"model": "B"})


def test_verify_passes_a_good_store(tmp_path):
    write_store(tmp_path / "s.zarr", {"h": _acts(8)}, keys=[str(i) for i in range(8)], attrs={"model": "m"})
    assert verify(ActivationStore.open(tmp_path / "s.zarr")).ok


def test_verify_counts_non_finite_values(tmp_path):
    acts = _acts(4)
    acts[1, 0, 0] = 1e6  # overflows float16
    acts[2, 1, 1] = np.nan
    write_store(tmp_path / "s.zarr", {"h": acts}, keys=list("abcd"), attrs={"model": "m"}, dtype="float16")
    s = ActivationStore.open(tmp_path / "s.zarr")
    r = verify(s)
    assert not r.ok and r.nonfinite["h"] == 2
    assert s.hook_stats("h").nonfinite == 2


def test_verify_names_the_part_whose_counts_disagree(tmp_path):
    write_store(tmp_path / "s.zarr", {"h": _acts(4)}, keys=list("abcd"), attrs={"model": "m"}, part="p7")
    meta = tmp_path / "s.zarr" / "parts" / "p7" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["n_images"] = 5
    meta.write_text(json.dumps(doc))
    r = verify(ActivationStore.open(tmp_path / "s.zarr"))
    assert any("part p7" in p for p in r.problems)


def test_verify_finds_keys_repeated_across_parts(tmp_path):
    write_store(tmp_path / "s.zarr", {"h": _acts(2)}, keys=["x", "y"], attrs={"model": "m"}, part="p0")
    write_store(tmp_path / "s.zarr", {"h": _acts(2)}, keys=["y", "z"], attrs={"model": "m"}, part="p1")
    r = verify(ActivationStore.open(tmp_path / "s.zarr"))
    assert any("more than once" in p for p in r.problems)


def test_store_verify_cli_exits_nonzero_on_a_problem(tmp_path, run_cli):
    acts = _acts(2)
    acts[0, 0, 0] = np.inf
    write_store(tmp_path / "s.zarr", {"h": acts}, keys=["x", "y"], attrs={"model": "m"})
    code, _, err = run_cli("store", "verify", tmp_path / "s.zarr")
    assert code == 1 and "non-finite" in err.splitlines()[-1]


def test_store_info_cli_prints_json_summary(tmp_path, run_cli):
    write_store(tmp_path / "s.zarr", {"h": _acts(3)}, keys=list("abc"), labels=[0, 1, 1], attrs={"model": "m"})
    code, out, _ = run_cli("store", "info", tmp_path / "s.zarr", "--json")
    s = json.loads(out)
    assert code == 0 and s["n_images"] == 3 and s["n_classes"] == 2 and s["hooks"]["h"]["shape"] == [3, 3, 4]


@pytest.mark.parametrize("batch", [1, 3, 7, 16, 40])
def test_part_writer_chunking_round_trips_any_batch_size(tmp_path, batch):
    acts = _acts(37, t=2, d=8)
    root = open_root(tmp_path / "s.zarr", {"model": "m", "hooks": {"h": {"n_tokens": 2, "d": 8, "meaning": ""}},
                                           "dtype": "float32"}, {})
    w = PartWriter(root, "p0", "src", [HookLayout("h", 2, 8)], "float32", chunk_bytes=5 * 2 * 8 * 4)
    for s in range(0, 37, batch):
        w.append([str(i) for i in range(s, min(s + batch, 37))], [0] * len(acts[s : s + batch]), {"h": acts[s : s + batch]})
    w.close()
    s = ActivationStore.open(tmp_path / "s.zarr")
    assert s.array("h", 0).chunks[0] == 5 and len(s.chunks("h")) == 8
    np.testing.assert_array_equal(s.read("h", slice(None)), acts)
    np.testing.assert_array_equal(np.asarray(__import__("zarr").open_array(tmp_path / "s.zarr/parts/p0/acts/h")[:]), acts)


def test_compressed_parts_round_trip(tmp_path):
    acts = _acts(9)
    root = open_root(tmp_path / "s.zarr", {"model": "m", "hooks": {"h": {"n_tokens": 3, "d": 4}}, "dtype": "float32"}, {})
    w = PartWriter(root, "p0", "src", [HookLayout("h", 3, 4)], "float32", compression="zstd", chunk_bytes=4 * 48)
    w.append([str(i) for i in range(9)], [0] * 9, {"h": acts})
    w.close()
    np.testing.assert_array_equal(ActivationStore.open(tmp_path / "s.zarr").read("h", slice(None)), acts)



def test_open_root_creates_the_store_in_an_empty_directory(tmp_path):
    path = tmp_path / "s.zarr"
    path.mkdir()
    open_root(path, {"model": "m", "hooks": {}}, {})
    assert ActivationStore.open(path).config["model"] == "m"


def test_concurrent_root_creation_yields_one_store(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cfg = {"model": "m", "hooks": {"h": {"n_tokens": 3, "d": 4}}, "dtype": "float32"}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: open_root(tmp_path / "s.zarr", cfg, {}), range(32)))
    assert sorted(x.name for x in tmp_path.iterdir()) == ["s.zarr"]
    assert ActivationStore.open(tmp_path / "s.zarr").hooks == ["h"]


def test_directory_with_other_files_is_refused(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ClipsaeError, match="not a Zarr store"):
        open_root(tmp_path / "other", {"model": "m", "hooks": {}}, {})


def test_iter_rows_yields_every_selected_row_once_in_global_order(tmp_path):
    a, b = _acts(7, t=5, d=4, seed=1), _acts(5, t=5, d=4, seed=2)
    lay = {"h": {"cls_token": True, "grid": [2, 2]}}
    write_store(tmp_path / "s.zarr", {"h": a}, keys=[f"a{i}" for i in range(7)], attrs={"model": "m"}, part="p0", layouts=lay)
    write_store(tmp_path / "s.zarr", {"h": b}, keys=[f"b{i}" for i in range(5)], attrs={"model": "m"}, part="p1", layouts=lay)
    s = ActivationStore.open(tmp_path / "s.zarr")
    both = np.concatenate([a, b])
    for tokens, idx in (("all", [0, 1, 2, 3, 4]), ("cls", [0]), ("patches", [1, 2, 3, 4])):
        blocks = list(s.iter_rows("h", tokens))
        images = np.concatenate([r.images_M for r in blocks])
        toks = np.concatenate([r.tokens_M for r in blocks])
        acts = np.concatenate([r.acts_MD for r in blocks])
        assert list(images) == [i for i in range(12) for _ in idx] and list(toks) == idx * 12
        np.testing.assert_array_equal(acts, both[:, idx].reshape(-1, 4))


@pytest.mark.parametrize("n", [1, 50, 999, 1000, 4097, 12345])
def test_chunks_fitted_to_a_known_part_size_pad_less_than_a_row_per_chunk(n):
    from clipsae.store.layout import chunk_rows

    for t, d in ((1, 768), (257, 1024), (50, 768)):
        rows = chunk_rows(t, d, 2, expected_images=n)
        chunks = -(-n // rows)
        assert rows <= chunk_rows(t, d, 2) and chunks * rows - n < chunks


def test_small_part_takes_the_disk_its_data_needs(tmp_path):
    acts = _acts(50, t=1, d=768).astype(np.float16)
    write_store(tmp_path / "s.zarr", {"embed": acts}, keys=[str(i) for i in range(50)], attrs={"model": "m"})
    files = (tmp_path / "s.zarr" / "parts" / "part-00000" / "acts" / "embed" / "c").rglob("*")
    assert sum(f.stat().st_size for f in files if f.is_file()) == acts.nbytes


def test_unknown_compression_is_refused_before_the_part_is_written(tmp_path):
    root = open_root(tmp_path / "s.zarr", {"model": "m", "hooks": {}}, {})
    with pytest.raises(ClipsaeError, match="compression must be one of none, zstd, not 'lz4'"):
        PartWriter(root, "p0", "src", [HookLayout("h", 1, 4)], "float32", compression="lz4")
    assert not (tmp_path / "s.zarr" / "parts" / "p0").exists()


def test_part_writer_keeps_no_view_of_a_batch_the_caller_reuses(tmp_path):
    write_store(tmp_path / "s.zarr", {"h": _acts(1)}, keys=["first"], attrs={"model": "m"}, part="p0")
    root = open_root(tmp_path / "s.zarr", ActivationStore.open(tmp_path / "s.zarr").config, {})
    w = PartWriter(root, "p1", "src", [HookLayout("h", 3, 4)], "float32")
    buf = np.zeros((2, 3, 4), dtype=np.float32)
    want = []
    for i in range(5):  # batches smaller than a chunk, all in one reused buffer
        buf[:] = np.arange(24, dtype=np.float32).reshape(2, 3, 4) + 100 * i
        want.append(buf.copy())
        w.append([f"k{i}a", f"k{i}b"], [0, 0], {"h": buf})
    buf[:] = -1
    w.close({})
    stored = ActivationStore.open(tmp_path / "s.zarr").read("h", slice(1, None))
    np.testing.assert_array_equal(stored, np.concatenate(want))


def test_positions_of_finds_each_key_as_a_plain_lookup_does(tmp_path):
    keys = ["b", "a", "c", "e"]
    write_store(tmp_path / "s.zarr", {"x": np.zeros((4, 1, 2), np.float32)}, keys, attrs={"model": "m"})
    st = ActivationStore.open(tmp_path / "s.zarr")
    asked = ["a", "zz", "e", "b", "", "c"]
    plain = {k: i for i, k in enumerate(keys)}
    assert st.positions_of(asked).tolist() == [plain.get(k, -1) for k in asked]
    assert st.positions_of([]).tolist() == []
    assert st.images_of(["c", "a"]).tolist() == [2, 1]
    with pytest.raises(ClipsaeError, match="holds no image with key 'zz'"):
        st.images_of(["a", "zz"])
