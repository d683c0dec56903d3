"""A store that lost or changed a chunk is reported, naming the part, hook and chunk; never read as zeros."""

import numpy as np
import pytest

from clipsae.errors import ClipsaeError
from clipsae.store import ActivationStore, HookLayout, PartWriter, open_root, verify
from tests.conftest import tree_snapshot


@pytest.fixture
def store(tmp_path):
    """Two parts of 10 images, 4 rows a chunk: chunks 0..2 each, the last one short."""
    path = tmp_path / "s.zarr"
    root = open_root(path, {"model": "m", "dtype": "float16", "hooks": {"h": {"n_tokens": 2, "d": 8}}}, {})
    rng = np.random.default_rng(0)
    for name in ("p0", "p1"):
        w = PartWriter(root, name, "src", [HookLayout("h", 2, 8)], "float16", chunk_bytes=4 * 2 * 8 * 2)
        w.append([f"{name}-{i}" for i in range(10)], list(range(10)), {"h": rng.standard_normal((10, 2, 8))})
        w.close()
    return path


def _chunk(store, part="p1", index=1):
    return store / "parts" / part / "acts" / "h" / "c" / str(index) / "0" / "0"


def test_verify_passes_the_intact_store(store):
    assert verify(ActivationStore.open(store)).ok


def test_deleted_chunk_is_named_by_verify_and_refused_by_the_reader(store):
    _chunk(store).unlink()
    s = ActivationStore.open(store)
    assert verify(s).problems == [f"part p1, hook h: chunk 1 is missing ({_chunk(store)})"]
    with pytest.raises(ClipsaeError, match="part p1, hook h: chunk 1 is missing"):
        s.read("h", [14])
    with pytest.raises(ClipsaeError, match="chunk 1 is missing"):
        list(s.iter_rows("h"))


def test_truncated_chunk_is_named_by_verify_and_refused_by_the_reader(store):
    f = _chunk(store, "p0", 0)
    f.write_bytes(f.read_bytes()[:100])
    s = ActivationStore.open(store)
    problems = verify(s).problems
    assert len(problems) == 1 and problems[0].startswith("part p0, hook h: chunk 0 has 100 bytes, expected 128")
    with pytest.raises(ClipsaeError, match="chunk 0 has 100 bytes"):
        s.read("h", slice(0, 2))


def test_altered_chunk_is_found_by_its_checksum(store):
    f = _chunk(store, "p1", 2)
    data = bytearray(f.read_bytes())
    data[3] ^= 0x40
    f.write_bytes(bytes(data))
    assert verify(ActivationStore.open(store)).problems == [
        "part p1, hook h: chunk 2 was altered after it was written (CRC32C differs)"]


def test_padding_beyond_the_last_row_is_not_checksummed(store):
    f = _chunk(store, "p1", 2)  # rows 8, 9 of the part, then two rows of padding
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    assert verify(ActivationStore.open(store)).ok


def test_lost_labels_chunk_is_reported(store):
    (store / "parts" / "p0" / "labels" / "c" / "0").unlink()
    s = ActivationStore.open(store)
    assert any(p.startswith("part p0: labels: chunk 0 is missing") for p in verify(s).problems)
    with pytest.raises(ClipsaeError, match="part p0: labels"):
        s.labels()


def test_verify_cli_lists_problems_and_ends_on_one_error_line(store, run_cli):
    _chunk(store).unlink()
    before = tree_snapshot(store)
    code, out, err = run_cli("store", "verify", store)
    assert code == 1 and "problem: part p1, hook h: chunk 1 is missing" in out
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "delete" in err
    assert tree_snapshot(store) == before


def test_lost_parts_metadata_is_recreated_without_touching_the_parts(store):
    (store / "parts" / "zarr.json").unlink()
    cfg = ActivationStore.open(store).config
    before = {k: v for k, v in tree_snapshot(store).items() if k != "parts/zarr.json"}
    open_root(store, cfg, {})
    after = tree_snapshot(store)
    assert "parts/zarr.json" in after and {k: v for k, v in after.items() if k != "parts/zarr.json"} == before
    assert ActivationStore.open(store).n_images == 20


def test_lost_keys_chunk_is_reported_and_refused_in_one_line(store):
    (store / "parts" / "p1" / "keys" / "c" / "0" / "0").unlink()
    s = ActivationStore.open(store)
    assert any(p.startswith("part p1: keys: chunk 0 is missing") for p in verify(s).problems)
    with pytest.raises(ClipsaeError, match="part p1: keys"):
        s.keys()


def _flip(f, at=3):
    data = bytearray(f.read_bytes())
    data[at] ^= 0x40
    f.write_bytes(bytes(data))


def test_an_altered_chunk_is_refused_by_every_read_with_verifys_line(store):
    _flip(_chunk(store, "p1", 1))
    s = ActivationStore.open(store)
    line = "part p1, hook h: chunk 1 was altered after it was written (CRC32C differs)"
    assert verify(s).problems == [line]
    for read in (lambda: s.read("h", [14]), lambda: list(s.iter_rows("h")),
                 lambda: list(s.iter_chunks("h", shuffle=True))):
        with pytest.raises(ClipsaeError, match=line.replace("(", r"\(").replace(")", r"\)")):
            read()
    assert s.read("h", [0, 19]).shape == (2, 2, 8)  # the intact chunks still read


def test_an_altered_keys_or_labels_chunk_is_refused(store):
    _flip(store / "parts" / "p0" / "keys" / "c" / "0" / "0", at=0)
    _flip(store / "parts" / "p1" / "labels" / "c" / "0", at=0)
    s = ActivationStore.open(store)
    problems = verify(s).problems
    assert "part p0: keys: chunk 0 was altered after it was written (CRC32C differs)" in problems
    assert "part p1: labels: chunk 0 was altered after it was written (CRC32C differs)" in problems
    with pytest.raises(ClipsaeError, match="part p0: keys: chunk 0 was altered"):
        s.keys()
    with pytest.raises(ClipsaeError, match="part p1: labels: chunk 0 was altered"):
        s.labels()


def test_verify_cli_says_what_it_checked_and_how_to_rebuild_codes(encoded, tmp_path, run_cli):
    import shutil

    path = tmp_path / "s.zarr"
    shutil.copytree(encoded[0], path)
    code, out, _ = run_cli("store", "verify", path)
    assert code == 0
    assert "checked activations: 4 complete part(s), 40 images" in out
    assert "checked codes sae: 4 complete part(s)" in out
    _flip(path / "codes" / "sae" / "parts" / "part-002" / "latent_sum" / "c" / "0", at=0)
    code, out, err = run_cli("store", "verify", path)
    assert code == 1 and "problem: codes sae, part part-002, latent_sum: chunk 0 was altered" in out
    assert f"delete {path}/codes/sae/parts/<part> for part(s) part-002 and rerun the encode command with --name sae" in err
    assert "extract" not in err


def test_store_info_says_it_did_not_read_the_chunks_and_with_verify_names_the_damage(store, run_cli):
    _flip(_chunk(store, "p1", 1))
    code, out, _ = run_cli("store", "info", store)
    assert code == 0 and "chunks     not read here: `clipsae store verify`" in out
    code, out, err = run_cli("store", "info", store, "--verify")
    damage = "part p1, hook h: chunk 1 was altered after it was written (CRC32C differs)"
    assert code == 1 and f"chunks     1 DAMAGED: {damage}" in out and damage in err
