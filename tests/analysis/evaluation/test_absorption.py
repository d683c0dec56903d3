"""Feature absorption: SAEBench's per-image formulas, a hand-built absorbing SAE, and trained SAEs on a planted hierarchy."""

import csv
import json

import numpy as np
import pytest
import torch

from clipsae.analysis.encode import run_encode
from clipsae.analysis.encode_config import EncodeConfig
from clipsae.analysis.evaluation.absorption import absorption_fraction, is_full_absorption
from clipsae.store.writer import write_store
from tests.analysis.helpers import saelens_dir

COS = np.array([0.9, 0.5, 0.3, 0.2, 0.05])


def _frac(a, proj, main=(0,)):
    return absorption_fraction(a, np.asarray(proj, float), COS, np.array(main))


def test_absorption_fraction_follows_saebench_in_each_case():
    # Main silent, absorbers carry ≥ 40% of the projection: all of it is absorbed.
    assert _frac(1.0, [0.0, 0.5, 0.3, 0.1, 0.9]) == 1.0
    # Main carries 0.3, one absorber 0.5 of the rest 0.7: 0.5 / (0.5 + 0.3).
    assert _frac(1.0, [0.3, 0.5, 0.0, 0.0, 0.0]) == pytest.approx(0.625)
    # Absorbers cannot take more than what the main features leave: min(0.9, 0.2) / (0.2 + 0.8).
    assert _frac(1.0, [0.8, 0.5, 0.3, 0.1, 0.0]) == pytest.approx(0.2)
    # Only the three largest absorbers count, and only those aligned (cos ≥ 0.1) with a positive projection.
    assert _frac(1.0, [0.2, 0.2, 0.1, 0.05, 0.9]) == 0.0  # 0.35 of 1.0 < 40%; the 0.9 has cos 0.05
    assert _frac(1.0, [0.0, -0.5, 0.45, 0.0, 0.0]) == 1.0
    # The main features account for it all: nothing absorbed.
    assert _frac(1.0, [1.2, 0.5, 0.0, 0.0, 0.0]) == 0.0


def test_full_absorption_needs_silent_main_features_and_one_aligned_feature_carrying_40_percent():
    z = np.array([0.0, 2.0, 0.0, 0.0, 0.0])
    assert is_full_absorption(1.0, z, z * COS, COS, np.array([0]))
    assert not is_full_absorption(1.0, z + np.eye(5)[0] * 0.1, (z + np.eye(5)[0] * 0.1) * COS, COS, np.array([0]))
    weak = np.array([0.0, 0.7, 0.0, 0.0, 0.0])  # 0.35 of 1.0
    assert not is_full_absorption(1.0, weak, weak * COS, COS, np.array([0]))


N_CHILDREN, D = 20, 24


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
    """A parent (dimension 0) of 20 children (dimensions 1-20) and other images (dimension 21). The SAE's
    latent 0 is the parent, but silent on child c0; latent 1 fires on c0 only and its decoder row carries
    the parent's direction: it absorbs the parent there. Latent 2 fires on the other images."""
    tmp = tmp_path_factory.mktemp("absorb")
    rng = np.random.default_rng(0)
    # c0 is rare (2.6% of the parent), so that adding its latent lifts the k-feature probe's F1 by under 0.03.
    labels = np.r_[np.zeros(25, int), np.repeat(np.arange(1, N_CHILDREN), 50), np.full(400, N_CHILDREN)]
    x = np.zeros((len(labels), D))
    positive = labels < N_CHILDREN
    x[positive, 0] = 1.0
    x[positive, 1 + labels[positive]] = 1.0
    x[~positive, 21] = 1.0
    x += 0.01 * rng.standard_normal(x.shape)
    write_store(tmp / "s.zarr", {"embed": x.astype(np.float32)}, [f"img{i:05d}" for i in range(len(x))],
                labels=labels, attrs={"model": "m"}, dtype="float32")
    names = {i: f"c{i}" for i in range(N_CHILDREN)} | {N_CHILDREN: "other"}
    (tmp / "classes.json").write_text(json.dumps(names))
    (tmp / "hierarchy.json").write_text(json.dumps({"parent": [f"c{i}" for i in range(N_CHILDREN)]}))
    e = torch.eye(D)
    w_enc = torch.zeros(D, 3)
    w_enc[:, 0] = e[0] - 2 * e[1]
    w_enc[:, 1] = 2 * e[1]
    w_enc[:, 2] = e[21]
    w_dec = torch.stack([e[0], (e[0] + e[1]) / 2**0.5, e[21]])
    sae = saelens_dir(tmp / "sae", {"architecture": "standard"},
                      {"W_enc": w_enc, "b_enc": torch.full((3,), -0.5), "W_dec": w_dec, "b_dec": torch.zeros(D)})
    run_encode(EncodeConfig(tmp / "s.zarr", sae, name="hand", progress=False, device="cpu"))
    return tmp


def test_a_latent_that_carries_the_parent_direction_absorbs_its_child_and_no_other(hand_built, run_cli):
    code, out, err = run_cli("analyze", "absorption", "--store", hand_built / "s.zarr", "--codes", "hand", "--quiet",
                             "--hierarchy", hand_built / "hierarchy.json", "--classes", hand_built / "classes.json")
    assert code == 0, err
    analysis = hand_built / "s.zarr" / "codes" / "hand-analysis"
    rows = {r["child"]: r for r in csv.DictReader(open(analysis / "absorption.csv"))}
    assert rows["(all)"]["main_features"] == "0" and rows["(all)"]["split_count"] == "0"
    absorbed = rows["c0"]
    assert int(absorbed["images"]) > 0
    assert float(absorbed["absorption_rate"]) == 1.0 and float(absorbed["full_absorption_rate"]) == 1.0
    for c in range(1, N_CHILDREN):
        if int(rows[f"c{c}"]["images"]):
            assert float(rows[f"c{c}"]["absorption_rate"]) == 0.0 and float(rows[f"c{c}"]["full_absorption_rate"]) == 0.0
    # The parent's rate is the absorbed child's share of the parent's true positives.
    share = int(absorbed["images"]) / int(rows["(all)"]["images"])
    assert float(rows["(all)"]["absorption_rate"]) == pytest.approx(share)
    summary = json.loads((analysis / "absorption.json").read_text())
    assert summary["absorption_rate"] == pytest.approx(share) and summary["parents"] == 1


def test_a_child_the_store_does_not_know_is_one_line(hand_built, run_cli, tmp_path):
    (tmp_path / "h.json").write_text(json.dumps({"parent": ["c1", "c99"]}))
    code, _, err = run_cli("analyze", "absorption", "--store", hand_built / "s.zarr", "--codes", "hand", "--quiet",
                           "--hierarchy", tmp_path / "h.json", "--classes", hand_built / "classes.json",
                           "--out", tmp_path / "out")
    assert code != 0 and "child 'c99' is neither a class of the store" in err and "Traceback" not in err
    (tmp_path / "h.json").write_text(json.dumps(["c1"]))
    code, _, err = run_cli("analyze", "absorption", "--store", hand_built / "s.zarr", "--codes", "hand", "--quiet",
                           "--hierarchy", tmp_path / "h.json", "--out", tmp_path / "out")
    assert code != 0 and "must be a JSON object of parent name" in err


def test_a_matryoshka_sae_absorbs_less_than_a_topk_sae_of_the_same_width_and_l0(tmp_path):
    from bench.absorption import planted_absorption  # the benchmark's one seed: docs/benchmarks.md has all four

    rates = planted_absorption(tmp_path, seed=0, archs=("topk", "matryoshka"))
    assert rates["matryoshka"]["absorption_rate"] < rates["topk"]["absorption_rate"]
