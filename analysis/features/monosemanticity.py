"""Pach et al.'s monosemanticity score: how alike, in a second embedding space, the images are that a feature fires on.

For feature k with per-image values a_n ≥ 0 (scaled to [0, 1] by the feature's maximum) and unit image
embeddings ê_n, MS_k = Σ_{n<m} a_n a_m cos(e_n, e_m) / Σ_{n<m} a_n a_m
(Pach et al. 2025, "Sparse Autoencoders Learn Monosemantic Features in Vision-Language Models").

Both pairwise sums have closed forms in per-feature sums over the images where the feature fires:
Σ_{n<m} a_n a_m ê_n·ê_m = (‖Σ a_n ê_n‖² − Σ a_n² ‖ê_n‖²) / 2 and Σ_{n<m} a_n a_m = ((Σ a_n)² − Σ a_n²) / 2,
so one pass over the cached per-image values computes every score exactly, in time linear in the
firings and memory of (features × embedding width) float64. Scaling a by its maximum multiplies
numerator and denominator by the same factor, so it needs no pass of its own.
"""

from dataclasses import dataclass

import numpy as np
import torch

from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes
from clipsae.store.reader import ActivationStore

DEFAULT_EMBED_HOOK = "embed"
_ENTRIES_PER_STEP = 16384  # entries gathered at once: bounds the (entries × width) scratch


@dataclass(frozen=True)
class Monosemanticity:
    """Per feature: the score (nan where it fires on fewer than 2 images) and the images it fires on.

    ``baseline``: the score of a feature that fires equally on every image of the store, the mean
    pairwise cosine of all its embeddings; a feature is more monosemantic than chance above it.
    """

    ms_F: np.ndarray
    images_F: np.ndarray
    baseline: float
    embed_hook: str

    @property
    def scored_F(self) -> np.ndarray:
        """The features that have a score (those firing on at least 2 images)."""
        return ~np.isnan(self.ms_F)

    def median(self) -> float:
        """The median score over the scored features; nan where none is."""
        scored = self.ms_F[self.scored_F]
        return float(np.median(scored)) if len(scored) else float("nan")


def embedding_hook(store: ActivationStore, hook: str | None) -> str:
    """The hook whose per-image vector is e_n: ``hook``, or the store's ``embed`` hook; refused in one line
    where there is none or it has neither a single pooled token nor a CLS token."""
    name = hook or DEFAULT_EMBED_HOOK
    if name not in store.hooks:
        if hook is None:
            raise ClipsaeError(f"{store.path} has no {DEFAULT_EMBED_HOOK!r} hook for the monosemanticity score's image "
                               f"embeddings; extract one (--layers …,embed) or name another with --embed-hook "
                               f"(hooks: {', '.join(store.hooks)})")
        raise ClipsaeError(f"{store.path} has no hook {hook!r} (hooks: {', '.join(store.hooks)})")
    lay = store.layout(name)
    if lay.n_tokens != 1 and not lay.cls_token:
        raise ClipsaeError(f"--embed-hook {name} has {lay.n_tokens} tokens and no CLS token; name a pooled hook "
                           f"(embed, ln_post, attnpool, pooled) or one stored with its CLS token")
    return name


def _unit_embeddings(store: ActivationStore, hook: str, images_I: np.ndarray, dev: torch.device) -> torch.Tensor:
    """ê_n of the given images (token 0: the pooled vector or the CLS token); a zero vector stays zero."""
    e = torch.from_numpy(np.ascontiguousarray(store.read(hook, images_I)[:, 0])).to(dev, torch.float64)
    return torch.nn.functional.normalize(e, dim=1)


def monosemanticity(codes: Codes, embed_hook: str, by: str = "max", device: str | torch.device = "cpu",
                    entries_per_step: int = _ENTRIES_PER_STEP) -> Monosemanticity:
    """Every feature's monosemanticity score over the store's images, embedded by ``embed_hook``."""
    store, dev = codes.store, torch.device(device)
    width = store.d(embed_hook)
    sum_FD = torch.zeros((codes.d_sae, width), dtype=torch.float64, device=dev)
    s1_F = torch.zeros(codes.d_sae, dtype=torch.float64, device=dev)
    s2_F, s2e_F = torch.zeros_like(s1_F), torch.zeros_like(s1_F)
    images_F = np.zeros(codes.d_sae, dtype=np.int64)
    all_e = torch.zeros(width, dtype=torch.float64, device=dev)
    all_sq = 0.0
    for block in codes.iter_images(by):
        e_ID = _unit_embeddings(store, embed_hook, block.images_I, dev)
        all_e += e_ID.sum(0)
        all_sq += float((e_ID * e_ID).sum())
        norm_sq_I = (e_ID * e_ID).sum(1)
        local_E = torch.from_numpy(block.image_of_E - block.images_I[0]).to(dev)
        lat_E = torch.from_numpy(block.latents_E).to(dev)
        a_E = torch.from_numpy(block.values_E).to(dev, torch.float64)
        images_F += np.bincount(block.latents_E, minlength=codes.d_sae)
        s1_F.index_add_(0, lat_E, a_E)
        s2_F.index_add_(0, lat_E, a_E * a_E)
        s2e_F.index_add_(0, lat_E, a_E * a_E * norm_sq_I[local_E])
        for lo in range(0, len(a_E), entries_per_step):
            hi = lo + entries_per_step
            sum_FD.index_add_(0, lat_E[lo:hi], e_ID[local_E[lo:hi]] * a_E[lo:hi, None])
    pairs = s1_F * s1_F - s2_F
    cos = (sum_FD * sum_FD).sum(1) - s2e_F
    ms = torch.where(torch.from_numpy(images_F >= 2).to(dev), cos / pairs.clamp_min(torch.finfo(torch.float64).tiny),
                     torch.tensor(float("nan"), dtype=torch.float64, device=dev))
    n = codes.n_images
    baseline = (float(all_e @ all_e) - all_sq) / (n * (n - 1)) if n >= 2 else float("nan")
    return Monosemanticity(ms.cpu().numpy(), images_F, baseline, embed_hook)


def plot_monosemanticity(res: Monosemanticity, path, title: str):
    """Histogram of the scores, the store's baseline marked; returns ``path``."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    scored = res.ms_F[~np.isnan(res.ms_F)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if len(scored):
        ax.hist(scored, bins=50)
    ax.axvline(res.baseline, color="grey", ls="--", lw=1, label=f"all image pairs ({res.baseline:.3f})")
    ax.set_xlabel(f"monosemanticity score ({res.embed_hook} cosine)")
    ax.set_ylabel("features")
    ax.legend(fontsize=8)
    ax.set_title(f"{title}\n{len(scored)} features firing on ≥ 2 images", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
