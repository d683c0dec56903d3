import numpy as np
import pytest
import torch

from clipsae.train.metrics import density_histogram, evaluate, plot_density
from clipsae.train.model import SparseAutoencoder


def _relu_sae(d=6, n=10, seed=0) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    return SparseAutoencoder("standard", torch.randn(d, n, generator=g), torch.randn(n, generator=g) - 0.5,
                             torch.randn(n, d, generator=g), torch.randn(d, generator=g))


def test_metrics_follow_their_formulas():
    sae = _relu_sae()
    x = torch.randn(300, 6, generator=torch.Generator().manual_seed(1))
    m, density = evaluate(sae, x)
    with torch.no_grad():
        f = sae.encode(x).numpy()
        x_hat = sae(x).numpy()
    xn = x.numpy()
    err = ((xn - x_hat) ** 2).sum()
    assert m["mse"] == pytest.approx(err / xn.size, rel=1e-5)
    assert m["fvu"] == pytest.approx(err / ((xn - xn.mean(0)) ** 2).sum(), rel=1e-5)
    assert m["explained_variance"] == pytest.approx(1 - m["fvu"])
    cos = (xn * x_hat).sum(1) / np.linalg.norm(xn, axis=1) / np.linalg.norm(x_hat, axis=1)
    assert m["cosine"] == pytest.approx(cos.mean(), rel=1e-5)
    l0 = (f > 0).sum(1)
    assert m["l0"] == pytest.approx(l0.mean()) and m["l0_max"] == l0.max()
    assert m["population_sparsity"] == pytest.approx(l0.mean() / 10)
    assert np.allclose(density.numpy(), (f > 0).mean(0))
    assert m["dense"] == int(((f > 0).mean(0) > 0.1).sum())
    assert m["dead_heldout"] == int(((f > 0).sum(0) == 0).sum())


def test_density_histogram_counts_every_latent_once():
    density = torch.tensor([0.0, 0.0, 1e-9, 1e-3, 0.5, 1.0])
    hist = density_histogram(density)
    assert hist["never"] == 2 and sum(hist["counts"]) == 4


def test_density_plot_is_written_as_png(tmp_path):
    plot_density(torch.tensor([0.0, 1e-4, 1e-2, 0.3]), tmp_path / "d.png", "title")
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_the_density_plot_starts_where_the_latents_are():
    from clipsae.train.metrics import density_histogram, density_xlim

    density = torch.cat([torch.zeros(5), torch.tensor([10**-3.1, 10**-2.0, 10**-0.6])])
    lo, hi = density_xlim(density_histogram(density))
    assert lo == pytest.approx(-3.75) and hi == 0.0
