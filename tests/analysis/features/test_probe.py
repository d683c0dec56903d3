import itertools

import numpy as np
import pytest
from scipy import stats

from clipsae.analysis.attributes import Attributes
from clipsae.analysis.features.probe import feature_groups, probe
from clipsae.store.codes import Codes, ImageValues


def _dense(codes, by="max"):
    v = np.zeros((codes.n_images, codes.d_sae))
    for b in codes.iter_images(by):
        v[b.image_of_E, b.latents_E] = b.values_E
    return v


def _auroc(x, y):
    pos, neg = x[y == 1], x[y == 0]
    u = sum((p > q) + 0.5 * (p == q) for p, q in itertools.product(pos, neg))
    return u / (len(pos) * len(neg))


def _best_f1(x, y):
    best, best_t = -1.0, None
    for t in sorted(set(x.tolist()) | {0.0}):
        pred = x >= t
        tp, fp, fn = (pred & (y == 1)).sum(), (pred & (y == 0)).sum(), (~pred & (y == 1)).sum()
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 >= best:
            best, best_t = f1, t
    return best, best_t


def _attributes(n, seed):
    rng = np.random.default_rng(seed)
    binary = rng.integers(0, 2, n).astype(float)
    numeric = rng.integers(0, 5, n).astype(float)  # ties in the attribute too
    binary[[1, 6]] = np.nan
    numeric[[0, 3]] = np.nan
    return Attributes(["smiling", "age"], np.stack([binary, numeric]), np.array([True, False]), "test")


def _check(codes, attrs, got, v):
    for a, name in enumerate(attrs.names):
        known = ~np.isnan(attrs.values_AI[a])
        y = attrs.values_AI[a][known]
        for f in range(codes.d_sae):
            x = v[known, f]
            if attrs.binary[a]:
                assert got.auroc_AF[a, f] == pytest.approx(_auroc(x, y), abs=1e-12), (name, f)
                f1, t = _best_f1(x, y)
                assert got.f1_AF[a, f] == pytest.approx(f1, abs=1e-12) and got.threshold_AF[a, f] == pytest.approx(t)
            elif x.std() > 0:
                assert got.pearson_AF[a, f] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
                assert got.spearman_AF[a, f] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-9)
            else:
                assert np.isnan(got.pearson_AF[a, f]) and np.isnan(got.spearman_AF[a, f])
        assert got.images_A[a] == known.sum()


@pytest.mark.parametrize("max_entries", [10**6, 7])
def test_probe_equals_mann_whitney_brute_force_f1_and_scipy(codes, max_entries):
    attrs = _attributes(codes.n_images, 0)
    got = probe(codes, attrs, max_entries=max_entries)
    assert (got.passes > 1) == (max_entries == 7)
    _check(codes, attrs, got, _dense(codes))


def test_ties_in_the_values_count_half(codes, monkeypatch):
    # Three features over 8 images with repeated values, fed as the stream would give them.
    vals = {0: [(0, 2.0), (1, 2.0), (2, 1.0), (5, 2.0)], 1: [(3, 1.0), (4, 1.0)], 2: [(i, 3.0) for i in range(8)]}
    per_image = [[(f, val) for f, lst in vals.items() for i, val in lst if i == img] for img in range(8)]
    offsets = np.r_[0, np.cumsum([len(p) for p in per_image])]
    lat = np.array([f for p in per_image for f, _ in p])
    val = np.array([x for p in per_image for _, x in p], np.float32)
    block = ImageValues(np.arange(8), offsets, lat, val, np.zeros(len(lat), np.int64))
    monkeypatch.setattr(Codes, "iter_images", lambda self, by="max": iter([block]))
    monkeypatch.setattr(Codes, "n_images", property(lambda self: 8))
    y = np.array([1, 1, 0, 0, 1, 0, 1, 0], float)
    attrs = Attributes(["a", "n"], np.stack([y, np.array([3, 3, 1, 2, 2, 0, 5, 1], float)]), np.array([True, False]), "t")
    got = probe(codes, attrs)
    v = np.zeros((8, codes.d_sae))
    v[block.image_of_E, lat] = val
    _check(codes, attrs, got, v)
    assert got.auroc_AF[0, 2] == 0.5 and got.auroc_AF[0, 0] == pytest.approx(_auroc(v[:, 0], y))


def test_feature_groups_cover_every_feature_within_the_budget():
    fired = np.array([5, 0, 3, 9, 1, 1])
    groups = feature_groups(fired, 6)
    assert groups[0][0] == 0 and groups[-1][1] == 6 and all(a[1] == b[0] for a, b in zip(groups, groups[1:]))
    assert all(fired[lo:hi].sum() <= 6 or hi - lo == 1 for lo, hi in groups)


def test_probe_finds_the_features_planted_for_what_the_images_show(shards, tmp_path, run_cli):
    """Activations carry each image's colour and shape size (from its tar's .json) in two dimensions; an SAE
    whose features 0 and 1 read those dimensions must come out as the best probes of colour=red and size."""
    import csv

    import torch

    from clipsae.analysis.encode import EncodeConfig, run_encode
    from clipsae.pipeline.tario import iter_json
    from clipsae.store.writer import write_store
    from tests.analysis.helpers import GRID, N_TOKENS, D, sae_weights, saelens_dir

    rng = np.random.default_rng(0)
    store = tmp_path / "s.zarr"
    for i, tar in enumerate(sorted(shards.glob("*.tar"))):
        meta = list(iter_json(str(tar)))
        acts = rng.standard_normal((len(meta), N_TOKENS, D)).astype(np.float32) * 0.1
        for j, (_, m) in enumerate(meta):
            acts[j, :, 0] += 4.0 * (m["colour"] == "red")
            acts[j, :, 1] += 10.0 * m["size"]
        write_store(store, {"blocks.0": acts}, [k for k, _ in meta], attrs={"model": "planted"}, part=f"p{i}",
                    source=str(tar), layouts={"blocks.0": {"cls_token": True, "grid": list(GRID)}})
    w = sae_weights(0)
    w["W_enc"][:, :2] = torch.eye(D)[:, :2]
    w["b_dec"][:] = 0
    w["b_enc"][:2] = torch.tensor([-2.0, 0.0])
    w["b_enc"][2:] = -50.0  # the other features stay silent
    run_encode(EncodeConfig(store, saelens_dir(tmp_path / "sae", {"architecture": "standard"}, w), progress=False))
    code, out, err = run_cli("analyze", "probe", "--store", store, "--codes", "sae", "--attributes-json", "colour,size",
                             "--out", tmp_path / "o")
    assert code == 0, err
    with open(tmp_path / "o" / "probe_top.csv") as fh:
        best = {(r["attribute"], r["direction"]): r for r in csv.DictReader(fh) if r["rank"] == "1"}
    red = best["colour=red", "positive"]
    assert red["feature"] == "0" and float(red["auroc"]) == 1.0 and float(red["f1"]) == 1.0
    size = best["size", "positive"]
    assert size["feature"] == "1" and float(size["spearman"]) > 0.95  # the max over noisy tokens blurs it a little
    assert "colour=red: best feature 0, AUROC 1.000" in out


def test_probe_needs_one_source_of_attributes(codes, run_cli, tmp_path):
    code, _, err = run_cli("analyze", "probe", "--store", codes.store.path, "--codes", "sae", "--out", tmp_path)
    assert code == 1 and "give --attributes FILE or --attributes-json FIELDS" in err
