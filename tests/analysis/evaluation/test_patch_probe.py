"""Patch-level concept alignment: exact 1-D probes, their AP, and `analyze patch-probe` on planted features."""

import csv
import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from clipsae.analysis.encode import run_encode
from clipsae.analysis.encode_config import EncodeConfig
from clipsae.analysis.evaluation.probe1d import Entries, fit_probes
from clipsae.store.writer import write_store
from tests.analysis.helpers import saelens_dir


def _dense_problem(seed=0, n=500, n_features=4, n_classes=3):
    rng = np.random.default_rng(seed)
    x_NF = np.where(rng.random((n, n_features)) < 0.35, rng.gamma(2, 1, (n, n_features)), 0).round(1)
    x_NF[:, -1] = -x_NF[:, -1]  # a feature with negative values, ranked the other way round
    label_N = rng.integers(-1, n_classes, n)
    label_N[x_NF[:, 0] > 2.5] = 0  # feature 0 tells class 0 apart
    rows, feats = np.nonzero(x_NF)
    entries = Entries.build(feats, x_NF[rows, feats], label_N[rows], n,
                            np.bincount(label_N[label_N >= 0], minlength=n_classes))
    return x_NF, label_N, entries


def test_probes_equal_scikit_learns_unpenalised_logistic_regression():
    x_NF, label_N, entries = _dense_problem()
    fit = fit_probes(entries)
    assert fit.features_F.tolist() == [0, 1, 2, 3]
    for f in range(4):
        for c in range(3):
            y = label_N == c
            ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x_NF[:, [f]], y)
            assert fit.w_FC[f, c] == pytest.approx(ref.coef_[0, 0], abs=1e-4)
            assert fit.b_FC[f, c] == pytest.approx(ref.intercept_[0], abs=1e-4)
            p = ref.predict_proba(x_NF[:, [f]])[:, 1]
            loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
            assert fit.loss_FC[f, c] == pytest.approx(loss, rel=1e-6)
            loss0 = -np.mean(y * np.log(y.mean()) + (1 - y) * np.log(1 - y.mean()))
            assert fit.probe_r_FC[f, c] == pytest.approx(1 - loss / loss0, abs=1e-6)


def test_average_precision_equals_scikit_learns_with_ties_and_negative_values():
    x_NF, label_N, entries = _dense_problem(seed=1)
    fit = fit_probes(entries)
    for f in range(4):
        for c in range(3):
            scores = fit.w_FC[f, c] * x_NF[:, f]
            assert fit.ap_FC[f, c] == pytest.approx(average_precision_score(label_N == c, scores), abs=1e-12)


def test_a_feature_that_separates_a_class_keeps_a_finite_slope_and_ranks_it_perfectly():
    x_N = np.r_[np.full(30, 2.0), np.zeros(70)]
    label_N = np.r_[np.zeros(30, int), np.full(70, -1)]
    fit = fit_probes(Entries.build(np.zeros(30, int), x_N[:30], label_N[:30], 100, [30]))
    assert np.isfinite(fit.w_FC).all() and fit.w_FC[0, 0] > 5
    assert fit.ap_FC[0, 0] == 1.0 and fit.probe_r_FC[0, 0] > 0.99


GRID = (4, 4)
CLASSES = {0: "unlabelled", 1: "sky", 2: "road", 3: "car"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Patches whose activation is 2·e_label (+ noise on the unlabelled), and an SAE whose latent j fires on
    e_j: latent 1, 2, 3 fire exactly on the patches of class 1, 2, 3; latent 4 on random patches."""
    tmp = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    n, d = 40, 8
    labels_IP = rng.integers(0, 4, size=(n, GRID[0] * GRID[1])).astype(np.uint16)
    acts = np.zeros((n, 1 + labels_IP.shape[1], d), np.float32)
    acts[:, 1:][labels_IP > 0, labels_IP[labels_IP > 0]] = 2.0
    acts[:, 1:, 4] = np.where(rng.random(labels_IP.shape) < 0.3, 1.5, 0.0)
    share_IP = np.where(rng.random(labels_IP.shape) < 0.9, 1.0, 0.4).astype(np.float16)
    write_store(tmp / "s.zarr", {"resid.1": acts}, [f"k{i}" for i in range(n)], attrs={"model": "m"}, dtype="float32",
                layouts={"resid.1": {"cls_token": True, "grid": list(GRID)}}, mask_classes=CLASSES,
                patch_labels={"4x4": (labels_IP, share_IP)})
    eye = torch.eye(d)
    sae = saelens_dir(tmp / "sae", {"architecture": "standard"},
                      {"W_enc": eye, "b_enc": torch.full((d,), -0.5), "W_dec": eye.clone(), "b_dec": torch.zeros(d)})
    run_encode(EncodeConfig(tmp / "s.zarr", sae, name="planted", progress=False, device="cpu"))
    return tmp, labels_IP, share_IP


def test_a_feature_planted_on_one_class_gets_ap_one_and_purity_one(planted, run_cli):
    tmp, labels_IP, share_IP = planted
    code, out, err = run_cli("analyze", "patch-probe", "--store", tmp / "s.zarr", "--codes", "planted", "--quiet")
    assert code == 0, err
    out_dir = tmp / "s.zarr" / "codes" / "planted-analysis"
    rows = {r["class"]: r for r in csv.DictReader(open(out_dir / "patch_probe_classes.csv"))}
    for c, name in ((1, "sky"), (2, "road"), (3, "car")):
        assert int(rows[name]["best_feature"]) == c
        assert float(rows[name]["ap"]) == 1.0 and float(rows[name]["purity_16"]) == 1.0
        assert int(rows[name]["patches"]) == np.count_nonzero((labels_IP == c) & (share_IP >= 0.5))
    summary = json.loads((out_dir / "patch_probe.json").read_text())
    assert summary["map"] == 1.0 and summary["purity_16"] == 1.0 and summary["coverage_0.3"] == 1.0
    assert summary["patches"] == np.count_nonzero(share_IP >= 0.5)
    pairs = list(csv.DictReader(open(out_dir / "patch_probe.csv")))
    assert {int(r["feature"]) for r in pairs} == {1, 2, 3, 4} and len(pairs) == 4 * 3
    random_feature = [float(r["ap"]) for r in pairs if r["feature"] == "4"]
    assert max(random_feature) < 0.6


def test_top_keeps_each_class_best_features_only(planted, run_cli):
    tmp, _, _ = planted
    code, _, err = run_cli("analyze", "patch-probe", "--store", tmp / "s.zarr", "--codes", "planted", "--quiet",
                           "--top", "1", "--out", tmp / "top1")
    assert code == 0, err
    pairs = list(csv.DictReader(open(tmp / "top1" / "patch_probe.csv")))
    assert sorted((r["class"], r["feature"]) for r in pairs) == [("car", "3"), ("road", "2"), ("sky", "1")]


def test_patch_probe_of_a_store_without_masks_is_one_line(tmp_path, run_cli):
    from tests.analysis.helpers import make_store, sae_weights

    store = make_store(tmp_path / "s.zarr", n_parts=1)
    sae = saelens_dir(tmp_path / "sae", {"architecture": "topk", "k": 2}, sae_weights())
    run_encode(EncodeConfig(store, sae, name="c", progress=False, device="cpu"))
    code, _, err = run_cli("analyze", "patch-probe", "--store", store, "--codes", "c", "--quiet")
    assert code != 0 and "holds no patch labels" in err and "Traceback" not in err
