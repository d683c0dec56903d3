"""Neuron alignment (Fry): how close each SAE encoder direction comes to one MLP neuron's output direction.

For an SAE on ``resid.L`` (the output of ViT block L), the last thing to write that residual
stream is block L's MLP, whose neuron j adds a multiple of column j of ``mlp.c_proj.weight``.
A feature whose encoder direction is near one such column reads, mostly, one neuron. The same
statistic over random directions is the baseline: in d dimensions random directions already
reach some cosine with the nearest of 4d neuron directions.
"""

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clipsae.analysis.output import pyplot
from clipsae.errors import ClipsaeError
from clipsae.pipeline.towers import tower_for

ROWS_PER_BLOCK = 4096
BASELINE_QUANTILE = 0.99


def block_of(hook: str) -> int:
    """The ViT block whose output ``hook`` is; other hooks are refused."""
    m = re.fullmatch(r"resid\.(\d+)", hook)
    if m is None:
        raise ClipsaeError(f"neuron alignment needs codes on a ViT residual-stream hook (resid.N); these are on {hook}")
    return int(m.group(1))


def mlp_out_directions(visual: nn.Module, block: int) -> torch.Tensor:
    """(neurons, d): the output direction of every MLP neuron of ViT block ``block``."""
    tower = tower_for(visual)
    try:
        tower.resolve(f"resid.{block}")
    except ClipsaeError as exc:
        raise ClipsaeError(f"neuron alignment reads ViT blocks: {exc}") from None
    out = tower.mlp_out(block)
    if out is None:
        raise ClipsaeError(f"{type(visual).__name__} has no transformer blocks; neuron alignment reads ViTs")
    return out


def max_abs_cosine(dirs_FD: torch.Tensor, neurons_ND: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For each direction: the largest |cosine| with any neuron direction, and that neuron."""
    neurons = torch.nn.functional.normalize(neurons_ND.float(), dim=1)
    best, arg = [], []
    for r0 in range(0, dirs_FD.shape[0], ROWS_PER_BLOCK):
        d = torch.nn.functional.normalize(dirs_FD[r0:r0 + ROWS_PER_BLOCK].float(), dim=1)
        top = (d @ neurons.T).abs_().max(dim=1)
        best.append(top.values.cpu().numpy())
        arg.append(top.indices.cpu().numpy())
    return np.concatenate(best).astype(np.float64), np.concatenate(arg).astype(np.int64)


@dataclass(frozen=True)
class Alignment:
    """Per feature: max |cos| and its neuron; ``random_R``: the same for as many random directions."""

    max_cos_F: np.ndarray
    neuron_F: np.ndarray
    random_R: np.ndarray

    @property
    def threshold(self) -> float:
        return float(np.quantile(self.random_R, BASELINE_QUANTILE))

    def above_random_F(self) -> np.ndarray:
        return self.max_cos_F > self.threshold


def neuron_alignment(encoder_FD: torch.Tensor, neurons_ND: torch.Tensor, seed: int = 0) -> Alignment:
    """Alignment of the encoder's rows (one per feature) against random Gaussian directions."""
    enc = encoder_FD.detach().float()
    best, arg = max_abs_cosine(enc, neurons_ND)
    g = torch.Generator().manual_seed(seed)
    rand = torch.randn(enc.shape, generator=g).to(neurons_ND.device)
    return Alignment(best, arg, max_abs_cosine(rand, neurons_ND)[0])


def alignment_bins(al: Alignment, n: int = 60) -> np.ndarray:
    """Histogram edges over where the cosines lie (typically 0.1-0.2, not 0-1), features and baseline alike."""
    both = np.concatenate([np.asarray(al.random_R, dtype=float), np.asarray(al.max_cos_F, dtype=float)])
    lo, hi = float(both.min()), float(both.max())
    pad = max(0.02 * (hi - lo), 1e-3)
    return np.linspace(max(0.0, lo - pad), min(1.0, hi + pad), n + 1)


def plot_alignment(al: Alignment, path, title: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = alignment_bins(al)
    ax.hist(al.max_cos_F, bins=bins, alpha=0.6, label="SAE encoder directions", color="tab:blue")
    # The baseline as an outline drawn last, so the features' bars never hide it.
    ax.hist(al.random_R, bins=bins, histtype="step", lw=1.6, label="random directions", color="tab:orange")
    ax.set_xlabel("max |cosine| with an MLP neuron's output direction")
    ax.set_ylabel("directions")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
