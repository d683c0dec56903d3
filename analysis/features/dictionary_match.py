"""Dictionary stability: how many of one SAE's decoder directions another SAE also learned.

For SAEs A and B on the same hook, with unit decoder rows â_i and b̂_j: each A feature's best
match max_j â_i·b̂_j, and the one-to-one matching (Hungarian, on the same cosines) that maximises
their sum. Two seeds of one run usually share most directions above 0.7 (Paulo & Belrose 2025);
a permutation of the same SAE matches itself with cosine 1.
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from clipsae.errors import ClipsaeError

THRESHOLDS = (0.5, 0.7, 0.9)
MAX_MATCHING = 16384  # per side: the Hungarian solve wants the dense cosine matrix in memory (2 GiB at float64)
_BLOCK_ELEMENTS = 2**26  # cosines computed at once for the best match (256 MiB at float32)


@dataclass(frozen=True)
class DictionaryMatch:
    """Per A feature: its best B feature and cosine; its Hungarian partner and cosine (−1 / nan when the
    matching was not computed or left it unmatched, as when B has fewer features)."""

    best_b_A: np.ndarray
    best_cos_A: np.ndarray
    matched_b_A: np.ndarray
    matched_cos_A: np.ndarray
    matched: bool

    def shares(self) -> dict:
        """The share of A features above each threshold, for the best match and the one-to-one matching."""
        out = {f"best_above_{t}": float((self.best_cos_A > t).mean()) for t in THRESHOLDS}
        if self.matched:
            out |= {f"matched_above_{t}": float((np.nan_to_num(self.matched_cos_A, nan=-2) > t).mean()) for t in THRESHOLDS}
        return out


def unit_rows(w_ND: torch.Tensor) -> torch.Tensor:
    """Decoder rows scaled to unit length, in float32; an all-zero row stays zero (cosine 0 with anything)."""
    return torch.nn.functional.normalize(w_ND.detach().float(), dim=1)


def match_dictionaries(dec_a: torch.Tensor, dec_b: torch.Tensor, device: str | torch.device = "cpu",
                       max_matching: int = MAX_MATCHING) -> DictionaryMatch:
    """Best and one-to-one matches of A's decoder rows among B's, by cosine."""
    if dec_a.shape[1] != dec_b.shape[1]:
        raise ClipsaeError(f"the SAEs read different widths ({dec_a.shape[1]} and {dec_b.shape[1]}): their decoder "
                           f"directions live in different spaces")
    a, b = unit_rows(dec_a).to(device), unit_rows(dec_b).to(device)
    n_a, n_b = len(a), len(b)
    best_b, best_cos = torch.empty(n_a, dtype=torch.int64), torch.empty(n_a)
    step = max(1, _BLOCK_ELEMENTS // max(n_b, 1))
    for lo in range(0, n_a, step):
        cos = a[lo:lo + step] @ b.T
        v, j = cos.max(1)
        best_cos[lo:lo + step], best_b[lo:lo + step] = v.cpu(), j.cpu()
    matched_b, matched_cos = np.full(n_a, -1, np.int64), np.full(n_a, np.nan)
    matched = max(n_a, n_b) <= max_matching
    if matched:
        cos = (a.double() @ b.double().T).cpu().numpy()
        rows, cols = linear_sum_assignment(cos, maximize=True)
        matched_b[rows], matched_cos[rows] = cols, cos[rows, cols]
    return DictionaryMatch(best_b.numpy(), best_cos.double().numpy(), matched_b, matched_cos, matched)


def plot_match(m: DictionaryMatch, path, title: str):
    """Histograms of the best-match and matched cosines; returns ``path``."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(-1, 1, 81)
    ax.hist(m.best_cos_A, bins=bins, alpha=0.6, label="best match")
    if m.matched:
        ax.hist(m.matched_cos_A[~np.isnan(m.matched_cos_A)], bins=bins, alpha=0.6, label="one-to-one (Hungarian)")
    for t in THRESHOLDS:
        ax.axvline(t, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("decoder cosine with the B feature")
    ax.set_ylabel("A features")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
