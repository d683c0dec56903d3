"""Feature density: how often each feature fires, over tokens and over images, and how strongly.

density_tokens = tokens fired / encoded tokens; density_images = images fired / images.
A feature is dead if it never fired on the encoded images, dense if it fires on more than 10% of tokens.
"""

from dataclasses import dataclass

import numpy as np

from clipsae.analysis.features.fit import DENSE_ABOVE
from clipsae.analysis.features.top_images import TopImages
from clipsae.store.codes import PartSums

TOP_FOR_MEAN = 20


@dataclass(frozen=True)
class Density:
    tokens_fired_F: np.ndarray
    images_fired_F: np.ndarray
    density_tokens_F: np.ndarray
    density_images_F: np.ndarray
    mean_top_F: np.ndarray  # mean of the feature's top-20 per-image values; nan if it never fired
    dead_F: np.ndarray
    dense_F: np.ndarray


def density(sums: PartSums, n_positions: int, top: TopImages) -> Density:
    """Densities from the cached per-latent counts; ``top`` gives the top-20 per-image values."""
    n_tokens = max(sums.n_images * n_positions, 1)
    d_tok = sums.latent_tokens_fired / n_tokens
    filled = top.filled_F()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_top = np.where(filled > 0, top.values_FK.sum(1) / filled, np.nan)
    return Density(sums.latent_tokens_fired, sums.latent_images_fired, d_tok,
                   sums.latent_images_fired / max(sums.n_images, 1), mean_top,
                   sums.latent_tokens_fired == 0, d_tok > DENSE_ABOVE)


def plot_density_histogram(dens: Density, path, title: str) -> None:
    """Histogram of log10 token density over the features that fired; dead ones counted in the title."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    live = dens.density_tokens_F[~dens.dead_F]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(live):
        ax.hist(np.log10(live), bins=50)
    ax.axvline(np.log10(DENSE_ABOVE), color="grey", ls="--", lw=1)
    ax.set_xlabel("log10 feature density (fraction of encoded tokens)")
    ax.set_ylabel("features")
    ax.set_title(f"{title}\n{int(dens.dead_F.sum())} dead, {int(dens.dense_F.sum())} dense (> 10% of tokens)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_density_scatter(dens: Density, entropy_F: np.ndarray, path, title: str) -> None:
    """Fry's plot: log10 image density against log10 mean top-20 value, coloured by label entropy,
    with marginal histograms (the ultra-low-density cluster shows at the left)."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    live = ~dens.dead_F & (dens.mean_top_F > 0)
    x = np.log10(dens.density_images_F[live])
    y = np.log10(dens.mean_top_F[live])
    c = entropy_F[live]
    fig = plt.figure(figsize=(7, 6))
    grid = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), wspace=0.05, hspace=0.05)
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    side = fig.add_subplot(grid[1, 1], sharey=ax)
    known = ~np.isnan(c)
    ax.scatter(x[~known], y[~known], s=6, c="lightgrey", label="too few labelled top images")
    sc = ax.scatter(x[known], y[known], s=6, c=c[known], cmap="viridis")
    if known.any():
        fig.colorbar(sc, ax=side, label="label entropy (nats)")
    if len(x):
        top.hist(x, bins=50, color="grey")
        side.hist(y, bins=50, orientation="horizontal", color="grey")
    top.tick_params(labelbottom=False)
    side.tick_params(labelleft=False)
    ax.set_xlabel("log10 image density (fraction of images where the feature fires)")
    ax.set_ylabel("log10 mean of the top-20 image values")
    top.set_title(title, fontsize=9)
    if (~known).any():
        ax.legend(loc="lower left", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
