"""How well the SAE fits the encoded store, from the sums the codes cache (no activations read).

Over all encoded tokens: FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the mean over all tokens,
L0 = active latents per token, dead = features that never fired, dense = features firing on more
than 10% of the tokens.
"""

from dataclasses import dataclass

import numpy as np

from clipsae.store.codes import PartSums

DENSE_ABOVE = 0.1


@dataclass(frozen=True)
class Fit:
    fvu: float
    l0: float
    dead: int
    dense: int


def overall_fvu(sums: PartSums, n_positions: int) -> float:
    """FVU over every encoded token, against the mean over all of them."""
    n_tok = sums.n_images * n_positions
    mean = sums.position_x_sum.sum(0) / n_tok
    var = sums.position_x_sq.sum() - n_tok * (mean**2).sum()
    return float(sums.position_sq_err.sum() / var)


def fit(sums: PartSums, n_positions: int) -> Fit:
    """The SAE's fit over the store: FVU, L0 and the dead and dense feature counts."""
    n_tok = max(sums.n_images * n_positions, 1)
    tokens_fired = np.asarray(sums.latent_tokens_fired)
    return Fit(overall_fvu(sums, n_positions), float(tokens_fired.sum() / n_tok), int((tokens_fired == 0).sum()),
               int((tokens_fired / n_tok > DENSE_ABOVE).sum()))
