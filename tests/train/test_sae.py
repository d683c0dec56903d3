import json
from pathlib import Path

import pytest
import torch

from clipsae.train import archs
from clipsae.train.config import TrainConfig, default_lr
from clipsae.train.dense import dense_forward
from clipsae.train.export import save_sae, to_inference
from clipsae.train.load import load_sae
from clipsae.train.sae import TrainingSAE
from clipsae.train.spec import SAESpec
from clipsae.train.statistics import geometric_median


def _sae(arch: str, d=16, expansion=4, k=4) -> TrainingSAE:
    sae = TrainingSAE(SAESpec(arch, d, expansion, k=k), 0)
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(1))
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    return sae


def test_initial_encoder_is_a_copy_of_the_decoder_with_unit_features():
    sae = _sae("topk")
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.spec.d_sae))
    assert torch.equal(sae.W_enc, sae.W_dec)
    assert sae.W_enc.data_ptr() != sae.W_dec.data_ptr()


def test_decoder_gradient_is_projected_off_each_feature_and_features_renormalised():
    sae = _sae("relu")
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(3))
    sae(x).loss.backward()
    sae.project_decoder_grad()
    radial = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert radial.abs().max() < 1e-5
    torch.optim.SGD(sae.parameters(), lr=0.5).step()
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(sae.spec.d_sae), atol=1e-6)


def test_geometric_median_ignores_far_outliers_that_move_the_mean():
    pts = torch.randn(200, 4, generator=torch.Generator().manual_seed(4)) * 0.1
    pts[:20] += 1000.0
    gm = geometric_median(pts)
    assert gm.norm() < 1.0 < pts.mean(0).norm()


def test_lr_rule_warm_up_and_final_decay():
    assert default_lr(2**14) == pytest.approx(2e-4)
    assert default_lr(4 * 2**14) == pytest.approx(1e-4)
    cfg = TrainConfig(store=Path("s"), hook="h", tokens="all", out=Path("o"), saes=(SAESpec("topk", 4, 2, k=2),),
                      steps=1000, warmup_steps=50)
    assert cfg.lr_factor(0) == pytest.approx(1 / 50)
    assert cfg.lr_factor(49) == 1.0 and cfg.lr_factor(799) == 1.0
    assert cfg.lr_factor(900) == pytest.approx(0.5)
    assert cfg.lr_factor(999) == pytest.approx(1 / 200)


def test_batchtopk_threshold_tracks_the_smallest_kept_value_with_momentum():
    sae = _sae("batchtopk", k=2)
    x = torch.randn(16, 16, generator=torch.Generator().manual_seed(5))
    sae(x)
    first = sae.threshold.item()
    assert first > 0 and sae.threshold.dtype == torch.float64
    _, f = dense_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, 2, batch=True)
    assert first == pytest.approx(f[f > 0].min().item(), rel=1e-6)
    x2 = 3 * torch.randn(16, 16, generator=torch.Generator().manual_seed(6))
    sae(x2)
    _, f2 = dense_forward(x2, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, 2, batch=True)
    assert sae.threshold.item() == pytest.approx(0.99 * first + 0.01 * f2[f2 > 0].min().item(), rel=1e-6)


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk"])
def test_exported_sae_on_raw_inputs_equals_training_sae_on_scaled_inputs(arch):
    sae, s = _sae(arch), 3.7
    x = torch.randn(24, 16, generator=torch.Generator().manual_seed(7))
    if arch == "batchtopk":
        sae(s * x)
    model = to_inference(sae, s)
    with torch.no_grad():
        z = torch.nn.functional.linear(s * x - sae.b_dec, sae.W_enc, sae.b_enc)
        if arch == "relu":
            f = torch.relu(z)
        elif arch == "topk":
            _, f = dense_forward(s * x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, sae.spec.k)
        else:
            f = z * (z > sae.threshold.float())
        expected = (f @ sae.W_dec + sae.b_dec) / s
        assert torch.allclose(model.encode(x), f, atol=1e-5)
        assert torch.allclose(model(x), expected, atol=1e-5)


def test_saved_sae_loads_back_in_saelens_layout(tmp_path):
    model = to_inference(_sae("topk"), 2.0)
    save_sae(model, tmp_path, {"meta": {"hook_name": "resid.3"}}, torch.zeros(64), {"fvu": 0.1})
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", 16, 64, 4)
    from safetensors.torch import load_file

    assert load_file(tmp_path / "sae_weights.safetensors")["W_enc"].shape == (16, 64)  # SAELens's (d_in, d_sae)
    back = load_sae(tmp_path)
    assert back.W_enc.shape == (64, 16) and back.W_dec.shape == (64, 16)
    x = torch.randn(5, 16)
    assert torch.equal(back(x), model(x))
    assert (tmp_path / "sparsity.safetensors").is_file()


def test_resampling_points_dead_latents_at_inputs_and_resets_their_adam_state():
    sae = _sae("relu")
    opt = torch.optim.Adam(sae.parameters())
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(8))
    sae(x).loss.backward()
    opt.step()
    dead = torch.zeros(sae.spec.d_sae, dtype=torch.bool)
    dead[:3] = True
    n = archs.get("relu").resample(sae, x, dead, torch.Generator().manual_seed(9), opt)
    assert n == 3
    x_c = (x - sae.b_dec).detach()
    cos = torch.nn.functional.normalize(sae.W_dec[:3].detach(), dim=1) @ torch.nn.functional.normalize(x_c, dim=1).T
    assert (cos.max(1).values > 0.999).all()
    assert (opt.state[sae.W_dec]["exp_avg"][:3] == 0).all()
    assert (sae.b_enc[:3] == 0).all()


def test_bf16_matmul_pre_activations_stay_close_to_fp32():
    sae = _sae("topk", d=64)
    x = torch.randn(128, 64, generator=torch.Generator().manual_seed(10))
    exact = sae.pre_acts(x)
    sae.bf16_matmul = True
    approx = sae.pre_acts(x)
    assert approx.dtype == torch.float32
    assert (approx - exact).abs().max() < 0.05 * exact.abs().max()
    out = sae(x)
    out.loss.backward()
    assert torch.isfinite(sae.W_enc.grad).all()


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_pre_activations_without_autograd_equal_the_differentiable_ones_in_one_reused_buffer(bf16):
    sae = _sae("topk", d=64)
    sae.bf16_matmul = bf16
    x = torch.randn(128, 64, generator=torch.Generator().manual_seed(12))
    exact = sae.pre_acts(x).detach()
    with torch.no_grad():
        z = sae.pre_acts(x)
        again = sae.pre_acts(x * 2)
    assert z.data_ptr() == again.data_ptr()  # the same buffer, written over
    with torch.no_grad():
        z = sae.pre_acts(x)
    # bf16: the bias is added in fp32 here, in bf16 under autocast
    assert torch.allclose(z, exact, rtol=0, atol=0.02 if bf16 else 1e-5)


def test_matryoshka_levels_nest_and_weights_sum_to_one():
    uw = SAESpec("matryoshka", 16, 4, matryoshka_weighting="uw")
    rw = SAESpec("matryoshka", 16, 4, matryoshka_weighting="rw")
    assert uw.levels == [4, 8, 16, 32, 64]
    assert uw.level_weights() == pytest.approx([0.2] * 5)
    assert rw.level_weights() == pytest.approx([5 / 15, 4 / 15, 3 / 15, 2 / 15, 1 / 15])


def test_bf16_auxk_gradients_stay_close_to_fp32():
    sae = _sae("topk", d=64)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(11))
    dead = torch.arange(0, sae.spec.d_sae, 4)  # AuxK's dense path: 64 dead latents, k_aux 32
    grads = []
    for bf16 in (False, True):
        sae.bf16_matmul = bf16
        sae.zero_grad()
        sae(x, dead).loss.backward()
        grads.append({n: p.grad.clone() for n, p in sae.named_parameters()})
    for name, exact in grads[0].items():
        approx = grads[1][name]
        assert (approx - exact).abs().max() <= 0.05 * exact.abs().max(), name
        assert (approx[dead] if name in ("W_enc", "W_dec") else approx).abs().sum() > 0, name
