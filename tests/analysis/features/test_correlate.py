import csv

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.optimize import linear_sum_assignment

from clipsae.analysis.commands import run_correlate
from clipsae.analysis.encode import EncodeConfig, run_encode
from clipsae.analysis.features import correlate as corr_mod
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore
from clipsae.store.writer import write_store
from tests.analysis.helpers import GRID, N_TOKENS, D, make_store, reference_codes, sae_weights, saelens_dir, store_from_tars

CFG_A = {"architecture": "standard"}
CFG_B = {"architecture": "topk", "k": 6}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Store A (36 images, standard SAE 'sa') and store B (24 of A's keys shuffled plus 6 of its own, TopK 'sb')."""
    tmp = tmp_path_factory.mktemp("corr")
    a = make_store(tmp / "a.zarr", n_parts=3, per_part=12, seed=0)
    rng = np.random.default_rng(5)
    keys = [f"img{i:05d}" for i in rng.permutation(36)[:24]] + [f"other{i}" for i in range(6)]
    b = tmp / "b.zarr"
    for p in range(2):
        write_store(b, {"blocks.0": rng.standard_normal((15, N_TOKENS, D)).astype(np.float32)}, keys[p * 15:(p + 1) * 15],
                    attrs={"model": "test-b"}, dtype="float32", part=f"part-{p}",
                    layouts={"blocks.0": {"cls_token": True, "grid": list(GRID)}})
    wa, wb = sae_weights(3), sae_weights(7)
    run_encode(EncodeConfig(a, saelens_dir(tmp / "sa", CFG_A, wa), progress=False))
    run_encode(EncodeConfig(b, saelens_dir(tmp / "sb", CFG_B, wb), progress=False))
    return a, b, wa, wb


def dense_values(store_path, cfg, w, by):
    """Plain reference: every image's value of every feature, from the SAE formula on the stored activations."""
    s = ActivationStore.open(store_path)
    z = reference_codes(cfg, w, torch.from_numpy(s.read("blocks.0", slice(None)).astype(np.float32))).numpy()
    return {"max": z.max(1), "mean": z.mean(1), "cls": z[:, 0]}[by].astype(np.float64), s.keys()


def shared_reference(pair, by):
    a, b, wa, wb = pair
    va, ka = dense_values(a, CFG_A, wa, by)
    vb, kb = dense_values(b, CFG_B, wb, by)
    pos_b = {k: i for i, k in enumerate(kb)}
    rows_a = np.array([i for i, k in enumerate(ka) if k in pos_b])
    rows_b = np.array([pos_b[ka[i]] for i in rows_a])
    return va[rows_a], vb[rows_b]


def sides(pair, by):
    a, b = ActivationStore.open(pair[0]), ActivationStore.open(pair[1])
    join = corr_mod.join_on_keys(a.keys(), b.keys())
    row_a, row_b = np.full(a.n_images, -1), np.full(b.n_images, -1)
    row_a[join.rows_a] = row_b[join.rows_b] = np.arange(join.n)
    va = corr_mod.shared_values(Codes(a, "sa"), by, row_a, join.n)
    vb = corr_mod.shared_values(Codes(b, "sb"), by, row_b, join.n)
    return va, vb, corr_mod.feature_moments(va), corr_mod.feature_moments(vb)


def reference_corr(xa, xb):
    live_a, live_b = xa.std(0) > 0, xb.std(0) > 0
    c = np.corrcoef(xa[:, live_a].T, xb[:, live_b].T)[:live_a.sum(), live_a.sum():]
    return c, live_a, live_b


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("path", ["dense", "sparse"])
@pytest.mark.parametrize("by", ["max", "mean", "cls"])
def test_correlation_equals_numpy_corrcoef_over_the_shared_images(pair, by, path, monkeypatch):
    monkeypatch.setattr(corr_mod, "FLUSH_BLOCKS", 2)
    va, vb, ma, mb = sides(pair, by)
    ref, live_a, live_b = reference_corr(*shared_reference(pair, by))
    assert np.array_equal(ma.live_F, live_a) and np.array_equal(mb.live_F, live_b)
    got = corr_mod.correlation_matrix(va, vb, ma, mb, CPU, rows_per_block=5, path=path).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_blocks_mixing_sparse_and_dense_products_give_the_same_correlation(pair, monkeypatch):
    va, vb, ma, mb = sides(pair, "max")
    fa, fb, rows = int(ma.live_F.sum()), int(mb.live_F.sum()), 5
    pairs = [float(np.dot(np.diff(va.indptr)[r:r + rows], np.diff(vb.indptr)[r:r + rows])) for r in range(0, 24, rows)]
    cut = float(np.median(pairs))
    full = [p for r, p in zip(range(0, 24, rows), pairs) if min(rows, 24 - r) == rows]
    assert min(full) < cut < max(full), "the blocks must differ in sparsity for this test"
    # Blocks with fewer pairs than the median take the sparse path, the others the dense one.
    monkeypatch.setattr(corr_mod, "SPARSE_PAIR_COST", rows * fa * fb / cut)
    got = corr_mod.correlation_matrix(va, vb, ma, mb, CPU, rows_per_block=rows).numpy()
    np.testing.assert_allclose(got, reference_corr(*shared_reference(pair, "max"))[0], atol=1e-5)


def test_join_pairs_keys_in_a_order_and_counts_repeated_keys():
    join = corr_mod.join_on_keys(np.array(["x", "b", "a", "b"]), np.array(["a", "z", "b", "x", "x"]))
    assert join.rows_a.tolist() == [0, 1, 2] and join.rows_b.tolist() == [3, 2, 0]
    assert (join.duplicate_keys_a, join.duplicate_keys_b) == (1, 1)


def test_stores_sharing_some_keys_correlate_over_those_alone(pair, tmp_path):
    lines = run_correlate((pair[0], "sa"), (pair[1], "sb"), tmp_path, 4, "max", device="cpu")
    assert lines[0].startswith("24 image keys shared by")
    ref, live_a, live_b = reference_corr(*shared_reference(pair, "max"))
    best = read_csv(tmp_path / "best_matches.csv")
    assert len(best) == 5 * live_a.sum()
    cols_b = np.nonzero(live_b)[0]
    for a, row in zip(np.nonzero(live_a)[0], ref):
        got = [r for r in best if int(r["a"]) == a]
        assert [int(r["rank"]) for r in got] == [1, 2, 3, 4, 5]
        np.testing.assert_allclose([float(r["corr"]) for r in got], np.sort(row)[::-1][:5], atol=1e-5)
        assert int(got[0]["b"]) == cols_b[np.argmax(row)]


def test_matching_is_the_one_to_one_pairing_of_largest_total_correlation(pair, tmp_path):
    run_correlate((pair[0], "sa"), (pair[1], "sb"), tmp_path, 4, "max", device="cpu")
    ref, live_a, live_b = reference_corr(*shared_reference(pair, "max"))
    rows, cols = linear_sum_assignment(ref, maximize=True)
    matching = read_csv(tmp_path / "matching.csv")
    assert len(matching) == min(live_a.sum(), live_b.sum())
    assert len({r["b"] for r in matching}) == len(matching)
    np.testing.assert_allclose(sum(float(r["corr"]) for r in matching), ref[rows, cols].sum(), atol=1e-4)


def test_max_diff_and_topk_overlap_equal_the_dense_reference(pair, tmp_path):
    k = 4
    run_correlate((pair[0], "sa"), (pair[1], "sb"), tmp_path, k, "max", device="cpu")
    xa, xb = shared_reference(pair, "max")
    for r in read_csv(tmp_path / "best_matches.csv"):
        want = np.abs(xa[:, int(r["a"])] - xb[:, int(r["b"])]).max()
        assert float(r["max_diff"]) == pytest.approx(want, rel=1e-5, abs=1e-6)

    def top(x):
        order = np.lexsort((np.arange(len(x)), -x))
        return set(order[:k][x[order[:k]] > 0])

    for r in read_csv(tmp_path / "matching.csv"):
        a, b = int(r["a"]), int(r["b"])
        assert float(r["topk_overlap"]) == pytest.approx(len(top(xa[:, a]) & top(xb[:, b])) / k)


def test_an_sae_with_permuted_latents_is_matched_back_to_each_latent(tmp_path):
    store = make_store(tmp_path / "s.zarr", n_parts=2, per_part=15, seed=4)
    w = sae_weights(9)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(w["W_enc"].shape[1]))
    wp = {"W_enc": w["W_enc"][:, perm], "b_enc": w["b_enc"][perm], "W_dec": w["W_dec"][perm], "b_dec": w["b_dec"]}
    run_encode(EncodeConfig(store, saelens_dir(tmp_path / "orig", CFG_A, w), progress=False))
    run_encode(EncodeConfig(store, saelens_dir(tmp_path / "perm", CFG_A, wp), progress=False))
    lines = run_correlate((store, "orig"), (store, "perm"), None, 5, "max", min_hits=1, device="cpu")
    out = store / "codes" / "orig-analysis" / "correlate-perm"
    inverse = torch.argsort(perm).numpy()
    matching = read_csv(out / "matching.csv")
    assert len(matching) > 10
    for r in matching:
        assert int(r["b"]) == inverse[int(r["a"])] and float(r["corr"]) == pytest.approx(1.0, abs=1e-5)
    firsts = [r for r in read_csv(out / "best_matches.csv") if r["rank"] == "1"]
    assert all(int(r["b"]) == inverse[int(r["a"])] and float(r["max_diff"]) < 1e-5 for r in firsts)
    assert "orig-feat" in lines[4] and "↔ perm-feat" in lines[4] and "corr=1.0000" in lines[4]


def test_features_constant_over_the_shared_images_are_dropped():
    # Feature 0 never fires, 1 fires on every row with one value, 2 on every row with two values, 3 on some rows.
    v = corr_mod.SharedValues(np.array([0, 3, 6, 8]), np.array([1, 2, 3, 1, 2, 3, 1, 2], dtype=np.int32),
                              np.array([2, 1, 5, 2, 1, 5, 2, 7], dtype=np.float32), 4)
    m = corr_mod.feature_moments(v)
    assert m.live_F.tolist() == [False, False, True, True] and m.n_constant == 2
    assert m.fired_F.tolist() == [0, 3, 3, 2]


def test_correlate_cli_refuses_stores_without_shared_keys(pair, tmp_path, run_cli):
    other = make_store(tmp_path / "o.zarr", n_parts=1, per_part=5, key_prefix="zz")
    run_encode(EncodeConfig(other, saelens_dir(tmp_path / "so", CFG_A, sae_weights(1)), progress=False))
    code, out, err = run_cli("analyze", "correlate", "--a", f"{pair[0]}:sa", "--b", f"{other}:so")
    assert code != 0 and "share no image keys" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--a", "nocolon", "--b", "x:y"], "--a must be STORE:CODES"),
    (["--a", "{a}:sa", "--b", "{a}:missing"], "no codes named 'missing'"),
    (["--a", "{a}:sa", "--b", "{b}:sb", "-k", "0"], "-k must be at least 1"),
])
def test_correlate_cli_bad_input_is_one_line(pair, run_cli, args, message):
    code, out, err = run_cli("analyze", "correlate", *(x.format(a=pair[0], b=pair[1]) for x in args))
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_matched_pairs_figure_is_drawn_from_the_relocated_tars(shards, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(shards, moved)
    store = store_from_tars(tmp_path / "s.zarr", list(moved.glob("*.tar")))
    run_encode(EncodeConfig(store, saelens_dir(tmp_path / "sae", CFG_A, sae_weights(2)), progress=False))
    shutil.rmtree(moved)
    lines = run_correlate((store, "sae"), (store, "sae"), tmp_path / "a", 4, "max", min_hits=1, device="cpu")
    assert any("matched_pairs.png not drawn" in ln and "pass --shards" in ln for ln in lines)
    run_correlate((store, "sae"), (store, "sae"), tmp_path / "b", 4, "max", min_hits=1, shards=shards, device="cpu")
    with Image.open(tmp_path / "b" / "matched_pairs.png") as im:
        assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 0
