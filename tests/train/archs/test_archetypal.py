"""Archetypal SAE: atoms inside the candidates' convex hull plus a bounded relaxation, candidates from the
store's rows, the constraints kept after every step, the export equal to the dictionary, its refusals."""

import numpy as np
import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.train import archs, load_sae
from clipsae.train.archs.archetypal import dictionary
from clipsae.train.configure import configure_training
from clipsae.train.export import to_inference
from clipsae.train.sae import TrainingSAE, optimise
from clipsae.train.trainer import run_train
from tests.train.planted import write_small_planted

D = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_small_planted(tmp_path_factory.mktemp("ra") / "s.zarr", 256, D, 24, seed=2)


def test_steps_keep_w_row_stochastic_and_the_relaxation_within_delta():
    spec = archs.get("archetypal").spec(D, 2, k=4, l1=0, candidates=40, delta=0.3)
    sae = TrainingSAE(spec, 0)
    g = torch.Generator().manual_seed(0)
    sae.arch.initialise(sae, torch.randn(200, D, generator=g), 0)
    assert torch.allclose(sae.W_dec, sae.candidates[:32])  # W starts as the identity: atom i on candidate i
    opt = torch.optim.Adam(sae.parameters(), lr=5e-2)
    for _ in range(15):
        optimise(sae, opt, torch.randn(64, D, generator=g) * 2, None, clip=1.0)
    W = sae.arch_W.detach()
    assert (W >= 0).all() and torch.allclose(W.sum(1), torch.ones(32), atol=1e-5)
    assert (sae.relax.detach().norm(dim=1) <= 0.3 + 1e-5).all() and sae.relax.detach().abs().max() > 0
    scale = 2.0
    model = to_inference(sae, scale)
    torch.testing.assert_close(model.W_dec, dictionary(sae).detach() / scale)
    assert model.architecture == "topk" and model.k == 4


def test_candidates_are_k_means_centroids_of_the_stores_rows(store, tmp_path):
    plan = configure_training(store, out=tmp_path / "r", arch="archetypal", expansion="2", k="3", candidates=8,
                              batch_size=64, steps=5, holdout=0.0)
    run = run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
    sae = load_sae(run.dirs["archetypal-x2-k3"])
    rows = torch.from_numpy(plan.store.read("a", np.arange(plan.store.n_images)).reshape(-1, D))
    # Every atom is within δ (in scaled units) of the centroids' hull, which lies inside the rows' hull:
    # its norm stays below the largest row norm plus the relaxation.
    scale = float(__import__("json").loads((run.dirs["archetypal-x2-k3"] / "cfg.json").read_text())["clipsae"]["scale"])
    assert (sae.W_dec.norm(dim=1) * scale <= rows.norm(dim=1).max() * scale + 1.0 + 1e-4).all()


@pytest.mark.parametrize("options, message", [
    ({"delta": -0.5}, "--delta must be at least 0"),
    ({"candidates": 100_000}, "--candidates 100000 is more than the 512 training rows"),
    ({"candidates": 0}, "--candidates must be at least 1"),
])
def test_bad_archetypal_options_are_refused_before_a_run_folder_exists(store, tmp_path, options, message):
    with pytest.raises(ClipsaeError, match=message):
        configure_training(store, out=tmp_path / "r", arch="archetypal", batch_size=64, k="3", holdout=0.0, **options)
    assert not (tmp_path / "r").exists()


def test_archetypal_jumprelu_keeps_the_dictionary_constraints_and_thresholds_non_negative():
    spec = archs.get("archetypal_jumprelu").spec(D, 2, k=4, l1=0, candidates=40, delta=0.3, bandwidth=0.05,
                                                l0_coefficient=1.0)
    assert spec.k == 0 and spec.candidates == 40  # TopK's k means nothing to it: set neutral
    sae = TrainingSAE(spec, 0)
    g = torch.Generator().manual_seed(1)
    sae.arch.initialise(sae, torch.randn(200, D, generator=g), 0)
    opt = torch.optim.Adam(sae.parameters(), lr=5e-2)
    for _ in range(15):
        optimise(sae, opt, torch.randn(64, D, generator=g) * 2, None, clip=1.0)
    W = sae.arch_W.detach()
    assert (W >= 0).all() and torch.allclose(W.sum(1), torch.ones(32), atol=1e-5)
    assert (sae.relax.detach().norm(dim=1) <= 0.3 + 1e-5).all()
    assert (sae.jump_threshold.detach() >= 0).all() and sae.jump_threshold.detach().max() > 0.01
    model = to_inference(sae, 2.0)
    assert model.architecture == "jumprelu"
    torch.testing.assert_close(model.W_dec, dictionary(sae).detach() / 2.0)
    torch.testing.assert_close(model.threshold, sae.jump_threshold.detach())


def test_archetypal_jumprelu_trains_from_the_store_and_is_saved_as_jumprelu(store, tmp_path):
    plan = configure_training(store, out=tmp_path / "r", arch="archetypal_jumprelu", expansion="2", candidates=8,
                              batch_size=64, steps=5, holdout=0.0)
    run = run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held)
    sae = load_sae(run.dirs["archetypal_jumprelu-x2-c1"])
    assert sae.architecture == "jumprelu" and sae.d_sae == 2 * D
