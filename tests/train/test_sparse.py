import pytest
import torch

from clipsae.train.dense import dense_forward
from clipsae.train.sae import TrainingSAE
from clipsae.train.sparse import select_topk_in
from clipsae.train.spec import SAESpec


def _sae(arch: str, d=16, expansion=8, k=4, seed=0) -> TrainingSAE:
    sae = TrainingSAE(SAESpec(arch, d, expansion, k=k), seed)
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(seed + 1))
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(seed + 2))
    return sae


def _dense_loss(sae: TrainingSAE, x: torch.Tensor):
    """The same loss written densely: (B, n) codes times the whole decoder."""
    P = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    spec = sae.spec
    x_hat, f = dense_forward(x, P["W_enc"], P["b_enc"], P["W_dec"], P["b_dec"], spec.k, batch=spec.arch != "topk")
    total_var = (x - x.mean(0)).pow(2).sum()
    if spec.arch == "matryoshka":
        loss = sum(w * (x - (f[:, :m] @ P["W_dec"][:m] + P["b_dec"])).pow(2).sum()
                   for m, w in zip(spec.levels, spec.level_weights())) / total_var
    else:
        loss = (x - x_hat).pow(2).sum() / total_var
    loss.backward()
    return loss, {n: p.grad for n, p in P.items()}


def _assert_step_equals_dense(sae: TrainingSAE, x: torch.Tensor):
    """The sparse step's loss and every gradient equal the dense computation's; returns its output."""
    out = sae(x)
    out.loss.backward()
    dense_loss, dense_grads = _dense_loss(sae, x)
    assert torch.allclose(out.loss, dense_loss, rtol=1e-5, atol=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, dense_grads[name], rtol=1e-4, atol=1e-6), name
    return out


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_sparse_step_equals_dense_computation_in_value_and_gradient(arch):
    _assert_step_equals_dense(_sae(arch), torch.randn(64, 16, generator=torch.Generator().manual_seed(3)))


def test_topk_codes_have_exactly_k_latents_per_row():
    sae = _sae("topk", k=5)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(4))
    out = sae(x)
    assert out.l0 <= 5
    _, f = dense_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, 5)
    assert ((f > 0).sum(1) <= 5).all()


def test_batchtopk_keeps_k_times_batch_latents_over_the_batch():
    sae = _sae("batchtopk", k=3)
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(5))
    out = sae(x)
    assert float(out.l0) * 40 == pytest.approx(3 * 40)


def test_auxk_selects_only_dead_latents():
    z = torch.randn(8, 20, generator=torch.Generator().manual_seed(6))
    dead = torch.zeros(20, dtype=torch.bool)
    dead[[2, 5, 11]] = True
    rows, cols, _ = select_topk_in(z, dead.nonzero().squeeze(1), 10)
    assert set(cols.tolist()) <= {2, 5, 11}
    assert len(rows) == 8 * 3


def test_auxk_loss_sends_gradient_to_dead_latents_only_through_aux_term():
    sae = _sae("topk", k=2)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(7))
    dead = torch.zeros(sae.spec.d_sae, dtype=torch.bool)
    dead[:10] = True
    sae(x).loss.backward()
    without = sae.W_enc.grad[:10].abs().sum()
    sae.zero_grad()
    out = sae(x, dead.nonzero().squeeze(1))
    out.loss.backward()
    assert out.aux > 0
    assert sae.W_enc.grad[:10].abs().sum() > without


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_training_trajectory_equals_a_plain_dense_reference_on_hard_data(arch):
    # Co-occurring, heavy-tailed features on a large offset: the data on which BatchTopK trails
    # TopK in short runs (docs/sae.md). The sparse trainer must still be exactly the plain algorithm.
    from clipsae.train.sae import optimise
    from tests.train.planted import hard_planted_dictionary

    x_all, _ = hard_planted_dictionary(4096, 16, 32, 3, seed=0)
    x_all = torch.from_numpy(x_all)
    ours, ref = _sae(arch, k=3, expansion=2), _sae(arch, k=3, expansion=2)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=3e-3)
    opt_ref = torch.optim.Adam(ref.parameters(), lr=3e-3)
    for step in range(20):
        x = x_all[step * 128 : (step + 1) * 128]
        optimise(ours, opt_ours, x, None, 1.0)
        loss, grads = _dense_loss(ref, x)
        opt_ref.zero_grad()
        for name, p in ref.named_parameters():
            p.grad = grads[name]
        ref.project_decoder_grad()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt_ref.step()
        ref.normalize_decoder()
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p, dict(ref.named_parameters())[name], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("path", ["dense columns", "sparse codes"])
def test_auxk_loss_and_gradients_equal_a_dense_masked_reference(path, monkeypatch):
    from clipsae.train.archs import sparse_family

    # The ratio of dead latents to k_aux above which AuxK takes the sparse kernels: 0 forces them.
    monkeypatch.setattr(sparse_family, "DENSE_AUXK_RATIO", 16 if path == "dense columns" else 0)
    sae = _sae("topk", k=3)
    x = torch.randn(48, 16, generator=torch.Generator().manual_seed(8))
    dead = torch.zeros(sae.spec.d_sae, dtype=torch.bool)
    dead[[1, 4, 9, 33, 60, 61, 100, 127]] = True
    out = sae(x, dead.nonzero().squeeze(1))
    out.loss.backward()
    P = {n: p.detach().clone().requires_grad_() for n, p in sae.named_parameters()}
    spec = sae.spec
    x_hat, _ = dense_forward(x, P["W_enc"], P["b_enc"], P["W_dec"], P["b_dec"], spec.k)
    z = (x - P["b_dec"]) @ P["W_enc"].T + P["b_enc"]
    masked = z.masked_fill(~dead, float("-inf"))
    top = masked.topk(min(spec.aux_k, int(dead.sum())), dim=1)
    f_aux = torch.zeros_like(z).scatter(1, top.indices, top.values.relu())
    e = (x - x_hat).detach()
    l_aux = (e - f_aux @ P["W_dec"]).pow(2).sum() / (e - e.mean(0)).pow(2).sum()
    loss = (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum() + spec.aux_alpha * l_aux
    loss.backward()
    assert torch.allclose(out.loss, loss, rtol=1e-5, atol=1e-6)
    for name, p in sae.named_parameters():
        assert torch.allclose(p.grad, P[name].grad, rtol=1e-4, atol=1e-6), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch's sync debug mode watches device-to-host reads")
@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_training_step_reads_nothing_back_from_the_device(arch):
    from clipsae.train.sae import optimise

    sae = _sae(arch, d=64, expansion=8, k=8).cuda()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3, fused=True)  # as the trainer makes it
    x = torch.randn(256, 64, device="cuda")
    dead = torch.arange(0, sae.spec.d_sae, 3, device="cuda")  # AuxK active
    optimise(sae, opt, x, dead, 1.0)  # Adam's state is created on the first step
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        optimise(sae, opt, x, dead, 1.0)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka"])
def test_batch_topk_step_with_few_positive_preactivations_equals_dense(arch):
    sae = _sae(arch)
    with torch.no_grad():
        sae.b_enc.fill_(-3.5)  # most pre-activations negative: fewer than k·B positive ones
    out = _assert_step_equals_dense(sae, torch.randn(64, 16, generator=torch.Generator().manual_seed(9)))
    assert 0 < float(out.l0) < sae.spec.k


def test_row_offsets_equal_counts_cumulated():
    from clipsae.train.codes import row_offsets

    rows = torch.tensor([0, 0, 2, 2, 2, 5, 6, 6])
    counts = torch.bincount(rows, minlength=8)
    assert torch.equal(row_offsets(rows, 8), torch.cumsum(counts, 0) - counts)
