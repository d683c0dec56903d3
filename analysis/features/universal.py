"""What a universal SAE's latents are across its models (``analyze universal``), from the codes each model's SAE
(``models/<m>`` of one ``train --universal`` run) made on its own store, joined on image key.

Per latent i, over the N images every store holds (a latent fires on an image where its per-image value,
``--by`` max by default, is above 0):
- ``fire_rate_m``: the share of images it fires on in model m;
- ``cofire_a_b``: P(fires in b | fires in a), the share of a's images on which it fires in b too;
- ``energy_m``: model m's share of its decoder energy, ‖D_m[i]‖² / Σ_m' ‖D_m'[i]‖², in the units the SAE was
  trained in (each model scaled to E‖x_m‖ = √d_m), so the shares sum to 1;
- ``universality``: the smallest co-firing rate over the ordered pairs of models: 1 when the latent fires on the
  same images in every model, 0 when some model never fires it where another does (a model's own latent).
  A latent that never fires in some model has universality 0; one that never fires at all is not ``live``.
Beside them, the cross-model reconstruction matrix: FVU of model b's activations from model a's codes
through b's decoder (and b's b_dec), over up to :data:`FVU_IMAGES` shared images.
"""

from dataclasses import dataclass

import numpy as np
import torch

from clipsae.errors import ClipsaeError

FVU_IMAGES = 2048
UNIVERSAL_ABOVE = 0.5  # the universality above which the summary counts a latent as shared by every model


@dataclass(frozen=True)
class UniversalTable:
    """Per-latent figures (module docstring): arrays (models, latents) or (models, models, latents)."""

    fire_rate_MN: np.ndarray
    cofire_MMN: np.ndarray
    energy_MN: np.ndarray
    universality_N: np.ndarray
    live_N: np.ndarray


def fires_matrix(indptr: np.ndarray, latents: np.ndarray, values: np.ndarray, n_latents: int):
    """The (images × latents) boolean matrix of positive per-image values, as scipy CSR."""
    import scipy.sparse

    keep = values > 0
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))[keep]
    ones = np.ones(int(keep.sum()), dtype=np.float32)
    return scipy.sparse.csr_matrix((ones, (rows, latents[keep])), shape=(len(indptr) - 1, n_latents))


def energy_shares(W_dec_scaled: list[torch.Tensor]) -> np.ndarray:
    """(models, latents): ‖D_m[i]‖² over its sum across models (0 for a latent with no energy anywhere)."""
    e = torch.stack([w.double().pow(2).sum(1) for w in W_dec_scaled]).numpy()
    total = e.sum(0)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def universal_table(fires: list, energy_MN: np.ndarray) -> UniversalTable:
    """The per-latent table from each model's fires matrix (same image rows) and the energy shares."""
    M = len(fires)
    n_images = fires[0].shape[0]
    count_MN = np.stack([np.asarray(f.sum(0)).ravel() for f in fires])
    cofire = np.zeros((M, M, count_MN.shape[1]))
    for a in range(M):
        for b in range(M):
            both = count_MN[a] if a == b else np.asarray(fires[a].multiply(fires[b]).sum(0)).ravel()
            cofire[a, b] = np.divide(both, count_MN[a], out=np.zeros_like(both, dtype=float), where=count_MN[a] > 0)
    off = ~np.eye(M, dtype=bool)
    universality = cofire[off].min(0)
    return UniversalTable(count_MN / max(n_images, 1), cofire, energy_MN, universality, count_MN.sum(0) > 0)


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """The area under the ROC curve of ``score`` for telling ``positive`` apart (ties count half)."""
    from scipy.stats import rankdata

    pos, neg = int(positive.sum()), int((~positive).sum())
    if not pos or not neg:
        raise ClipsaeError("an AUROC needs both positives and negatives")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def plot_universal(table: UniversalTable, names: list[str], path, title: str) -> str:
    """USAE's figure: the models' energy shares per live latent (universal ones in the middle, a model's own at
    its edge), and universality against energy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = table.live_N
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(0, 1, 41)
    for m, name in enumerate(names):
        ax0.hist(table.energy_MN[m, live], bins=bins, alpha=0.55, label=name)
    ax0.set_xlabel("share of the latent's decoder energy")
    ax0.set_ylabel("live latents")
    ax0.legend(fontsize=8)
    ax0.set_title("energy per model: shared latents in the middle, a model's own at 1 (or 0)")
    top = table.energy_MN.max(0)
    sc = ax1.scatter(top[live], table.universality_N[live], s=8, alpha=0.6,
                     c=table.fire_rate_MN.max(0)[live], cmap="viridis")
    fig.colorbar(sc, ax=ax1, label="largest firing rate")
    ax1.set_xlabel("largest model's energy share")
    ax1.set_ylabel("universality (smallest co-firing rate)")
    ax1.set_title("co-firing against energy")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
