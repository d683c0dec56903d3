"""JumpReLU: the straight-through gradients against their formulas, the sparsity losses, the export
equal to the training SAE, resume, and its options' refusals."""

import numpy as np
import pytest
import torch

from clipsae.errors import ClipsaeError
from clipsae.train import archs, load_sae
from clipsae.train.archs.jumprelu import jumprelu, step
from clipsae.train.configure import configure_training
from clipsae.train.export import to_inference
from clipsae.train.sae import TrainingSAE, optimise
from clipsae.train.trainer import TrainingStopped, run_train
from tests.train.planted import write_small_planted

D = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_small_planted(tmp_path_factory.mktemp("jr") / "s.zarr", 512, D, 32, seed=1)


def _train(store, out, stop=None, **options):
    plan = configure_training(store, out=out, holdout=0.0, batch_size=128, **options)
    return run_train(plan.cfg, quiet=True, store=plan.store, held=plan.held, stop=stop)


def test_the_threshold_gradient_is_the_rectangle_estimator():
    z = torch.tensor([[0.00, 0.09, 0.11, 0.5], [0.12, 0.2, 0.3, -1.0]], requires_grad=True)
    theta = torch.tensor([0.1, 0.1, 0.1, 0.1], requires_grad=True)
    eps = 0.05
    jumprelu(z, theta, eps).sum().backward()
    near = ((z - theta).abs() < eps / 2).float()
    assert torch.equal(z.grad, (z > theta).float())
    assert torch.allclose(theta.grad, (-(theta / eps) * near).sum(0).detach())
    theta.grad = None
    step(z, theta, eps).sum().backward()
    assert torch.allclose(theta.grad, (-(1 / eps) * near).sum(0).detach())
    assert torch.equal(jumprelu(z, theta, eps).detach(), (z * (z > theta)).detach())


@pytest.mark.parametrize("target", [None, 4.0])
def test_the_loss_is_reconstruction_plus_the_sparsity_term(target):
    spec = archs.get("jumprelu").spec(D, 2, k=32, l1=0, l0_coefficient=0.5, bandwidth=0.05,
                                      **({"target_l0": target} if target else {}))
    sae = TrainingSAE(spec, 0)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(0))
    out = sae(x)
    z = (x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    f = z * (z > sae.jump_threshold)
    sse = ((x - (f @ sae.W_dec + sae.b_dec)) ** 2).sum(1).mean()
    l0 = (z > sae.jump_threshold).float().sum(1).mean()
    sparsity = 0.5 * (l0 if target is None else (l0 / target - 1) ** 2)
    assert torch.allclose(out.loss, sse + sparsity, rtol=1e-5)
    assert torch.allclose(out.l0, (f > 0).float().sum(1).mean())


def trained_a_little(arch: str, steps: int = 20, k: int = 4, **options) -> TrainingSAE:
    """A small SAE of ``arch`` after a few Adam steps on random rows, its thresholds and gates moved."""
    spec = archs.get(arch).spec(D, 2, k=k, l1=1.0, **options)
    sae = TrainingSAE(spec, 0)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        optimise(sae, opt, torch.randn(64, D, generator=g), None, clip=1.0)
    return sae


def test_the_export_encodes_as_the_training_sae():
    sae = trained_a_little("jumprelu", l0_coefficient=0.5, bandwidth=0.05)
    assert (sae.jump_threshold != 0.01).any() and (sae.jump_threshold >= 0).all()
    scale = 1.7
    model = to_inference(sae, scale)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = (scale * x - sae.b_dec) @ sae.W_enc.T + sae.b_enc
        want = z * (z > sae.jump_threshold)
    assert model.architecture == "jumprelu"
    torch.testing.assert_close(model.encode(x), want, rtol=1e-4, atol=1e-5)


def test_stopped_and_resumed_ends_where_it_would_have(store, tmp_path):
    opts = dict(arch="jumprelu", expansion="2", steps=40, sparsity_warmup=20, checkpoint_every=10)
    whole = load_sae(_train(store, tmp_path / "whole", **opts).dirs["jumprelu-x2-c1"])
    asked = iter(range(1000))
    with pytest.raises(TrainingStopped):
        _train(store, tmp_path / "split", stop=lambda: next(asked) >= 25, **opts)
    resumed = load_sae(_train(store, tmp_path / "split", **opts).dirs["jumprelu-x2-c1"])
    torch.testing.assert_close(whole.threshold, resumed.threshold)
    torch.testing.assert_close(whole.W_dec, resumed.W_dec)


@pytest.mark.parametrize("options, message", [
    ({"bandwidth": 0.0}, "--bandwidth must be"),
    ({"target_l0": "0"}, "--target-l0 must be positive"),
    ({"target_l0": "-3"}, "--target-l0 must be positive"),
    ({"l0_coefficient": "-1"}, "--l0-coefficient must be non-negative"),
])
def test_bad_sparsity_options_are_refused_before_a_run_folder_exists(store, tmp_path, options, message):
    with pytest.raises(ClipsaeError, match=message):
        configure_training(store, out=tmp_path / "r", arch="jumprelu", batch_size=128, **options)
    assert not (tmp_path / "r").exists()


def test_a_sweep_over_targets_trains_each_in_one_pass(store, tmp_path):
    run = _train(store, tmp_path / "s", arch="jumprelu", expansion="2", steps=10, target_l0="2,4")
    assert sorted(run.dirs) == ["jumprelu-x2-l0_2-c1", "jumprelu-x2-l0_4-c1"]
    assert np.all([load_sae(d).architecture == "jumprelu" for d in run.dirs.values()])


def test_a_threshold_at_zero_still_learns_and_steps_keep_thresholds_non_negative():
    sae = TrainingSAE(archs.get("jumprelu").spec(D, 2, k=32, l1=0, l0_coefficient=1.0, bandwidth=0.05), 0)
    with torch.no_grad():
        sae.jump_threshold[:4] = 0.0
    x = torch.randn(256, D, generator=torch.Generator().manual_seed(3)) * 0.05  # pre-activations near 0
    sae(x).loss.backward()
    assert (sae.jump_threshold.grad[:4] != 0).all()
    with torch.no_grad():
        sae.jump_threshold[4] = -0.3
    sae.arch.after_update(sae)
    assert (sae.jump_threshold >= 0).all()
