"""MP-SAE: the training pursuit against a plain loop, and the saved SAE's encode equal to it."""

import torch

from clipsae.train import archs
from clipsae.train.export import to_inference
from clipsae.train.sae import TrainingSAE
from tests.train.archs.test_jumprelu import D, trained_a_little


def plain_pursuit(x: torch.Tensor, D_nd: torch.Tensor, b: torch.Tensor, k: int) -> torch.Tensor:
    """overcomplete's MpSAE.encode, written out row by row, on x − b."""
    codes = torch.zeros(len(x), len(D_nd))
    for row in range(len(x)):
        r = x[row] - b
        for _ in range(k):
            c = D_nd @ r
            j = int(c.argmax())
            codes[row, j] += c[j]
            r = r - c[j] * D_nd[j]
    return codes


def test_the_loss_is_the_pursuits_unexplained_variance():
    sae = TrainingSAE(archs.get("mp").spec(D, 2, k=3, l1=0), 0)
    x = torch.randn(32, D, generator=torch.Generator().manual_seed(0))
    out = sae(x)
    f = plain_pursuit(x, sae.W_dec.detach(), sae.b_dec.detach(), 3)
    x_hat = f @ sae.W_dec.detach() + sae.b_dec.detach()
    want = ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    torch.testing.assert_close(out.loss.detach(), want, rtol=1e-4, atol=1e-6)
    assert out.l0 <= 3


def test_the_saved_sae_encodes_as_the_pursuit():
    sae = trained_a_little("mp")
    scale = 1.3
    model = to_inference(sae, scale)
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(5))
    want = plain_pursuit(scale * x, sae.W_dec.detach(), sae.b_dec.detach(), sae.spec.k)
    assert model.architecture == "mp" and model.k == sae.spec.k
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x), (want @ sae.W_dec + sae.b_dec) / scale, rtol=1e-4, atol=1e-4)
