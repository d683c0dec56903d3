import numpy as np
import pytest
import torch

from clipsae.train.metrics import density_histogram, evaluate, plot_density
from clipsae.train.model import SparseAutoencoder


def _relu_sae(d=6, n=10, seed=0) -> SparseAutoencoder:
    g = torch.Generator().manual_seed(seed)
    return SparseAutoencoder("standard", torch.randn(d, n, generator=g).T, torch.randn(n, generator=g) - 0.5,
                             torch.randn(n, d, generator=g), torch.randn(d, generator=g))


def _topk_sae(d=6, n=64, k=3, seed=0) -> SparseAutoencoder:
    # n ≥ 16·k: evaluated from its sparse codes
    g = torch.Generator().manual_seed(seed)
    return SparseAutoencoder("topk", torch.randn(n, d, generator=g), torch.randn(n, generator=g) - 0.5,
                             torch.randn(n, d, generator=g), torch.randn(d, generator=g), k=k)


@pytest.mark.parametrize("make", [_relu_sae, _topk_sae], ids=["dense-codes", "sparse-codes"])
def test_metrics_follow_their_formulas(make):
    sae = make()
    n = sae.d_sae
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
    assert m["population_sparsity"] == pytest.approx(l0.mean() / n)
    assert np.allclose(density.numpy(), (f > 0).mean(0))
    assert m["dense"] == int(((f > 0).mean(0) > 0.1).sum())
    assert m["dead_heldout"] == int(((f > 0).sum(0) == 0).sum())


def _bin_of(hist, log10_density):
    edges = np.array(hist["edges_log10"])
    return int(np.clip(np.searchsorted(edges, log10_density, side="right") - 1, 0, len(edges) - 2))


def test_density_histogram_puts_each_latent_in_the_bin_of_its_log10_density():
    density = torch.tensor([0.0, 0.0, 1e-9, 1e-3, 1e-3, 0.5, 1.0])
    hist = density_histogram(density)
    assert hist["never"] == 2 and sum(hist["counts"]) == 5
    expected = np.zeros(len(hist["counts"]), int)
    for value in (-8.0, -3.0, -3.0, np.log10(0.5), 0.0):  # 1e-9 lies below the first edge and counts in the first bin
        expected[_bin_of(hist, value)] += 1
    assert hist["counts"] == expected.tolist()


def test_density_plot_draws_the_histogram(tmp_path):
    from PIL import Image

    plot_density(torch.tensor([0.0, 1e-4, 1e-2, 1e-2, 0.3]), tmp_path / "d.png", "title")
    with Image.open(tmp_path / "d.png") as im:
        assert im.size == (600, 350)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # matplotlib's first colour (tab:blue, #1f77b4) fills the bars.
    bars = (np.abs(rgb - [31, 119, 180]).sum(2) < 30)
    assert bars.sum() > 500


def test_the_density_plot_starts_where_the_latents_are():
    from clipsae.train.metrics import density_histogram, density_xlim

    density = torch.cat([torch.zeros(5), torch.tensor([10**-3.1, 10**-2.0, 10**-0.6])])
    lo, hi = density_xlim(density_histogram(density))
    assert lo == pytest.approx(-3.75) and hi == 0.0
