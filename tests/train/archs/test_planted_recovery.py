"""JumpReLU, Gated, MP and Archetypal SAEs recover a planted dictionary, trained together in one data pass
(a file of its own, so that the test runner can run it beside test_train_cli.py's)."""

import json

import pytest

from clipsae.train import load_sae
from tests.train.planted import recovery, write_planted_store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """4,096 images × 8 tokens of x = Σ a_j D_j + noise, 128 power-law features in 64 dimensions."""
    return write_planted_store(tmp_path_factory.mktemp("planted") / "planted.zarr")


def test_jumprelu_gated_mp_and_archetypal_recover_the_planted_dictionary_in_one_data_pass(planted, tmp_path, run_cli):
    """JumpReLU and Gated with no sparsity option: their defaults (the L0 penalty at SAELens's coefficient, the
    L1 weight) find the planted L0 (3) by themselves, as TopK is told it by --k. MP takes 4 picks, Archetypal
    keeps the 4 largest codes."""
    store, dictionary = planted
    out = tmp_path / "sweep"
    code, stdout, err = run_cli("train", "--store", store, "--arch", "jumprelu,gated,mp,archetypal", "--k", "4", "--expansion", "4",
                                "--steps", "500", "--batch-size", "1024", "--lr", "3e-3", "--holdout", "0.05",
                                "--out", out, "--quiet")
    assert code == 0, err
    for label in ("jumprelu-x4-c1", "gated-x4-l1_5", "mp-x4-k4", "archetypal-x4-k4"):
        metrics = json.loads((out / label / "metrics.json").read_text())
        assert recovery(dictionary, load_sae(out / label).W_dec.detach().numpy()) >= 0.9, label
        assert metrics["fvu"] <= 0.1 and metrics["l0"] <= 8, (label, metrics)  # the planted order: about 3
