"""``encode --input-norm store``: standardise each dimension with the store's own statistics, for SAEs
trained on standardised activations whose statistics were not shipped (CLIP-Scope, early saev).

x′_j = (x_j − μ_j)/σ_j with μ and σ the mean and (population) standard deviation of dimension j over
every encoded row of the hook in the store, computed in one streaming pass in float64 when the codes
are first made. They are recorded in the codes' identity, so a rerun, every array task and the
analyses that reload the SAE apply the same ones without another pass.
"""

import numpy as np

from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore
from clipsae.train.model import SparseAutoencoder


def store_statistics(store: ActivationStore, hook: str, tokens: str) -> dict:
    """{"mean": μ, "std": σ} per dimension (lists of floats) over the rows of ``hook``'s ``tokens``."""
    total = np.zeros(store.d(hook))
    total_sq = np.zeros(store.d(hook))
    n = 0
    for block in store.iter_rows(hook, tokens):
        x = block.acts_MD.astype(np.float64)
        total += x.sum(0)
        total_sq += np.square(x).sum(0)
        n += len(x)
    if not n:
        raise ClipsaeError(f"hook {hook} of {store.path} has no rows to take statistics from")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    return {"kind": "store", "rows": n, "mean": mean.tolist(), "std": std.tolist()}


def recorded_statistics(codes_identity: dict | None, hook: str, tokens: str) -> dict | None:
    """The store statistics that codes of ``hook`` and ``tokens`` already record, or None."""
    norm = (codes_identity or {}).get("input_norm")
    same = codes_identity is not None and codes_identity.get("hook") == hook and codes_identity.get("tokens") == tokens
    return norm if same and isinstance(norm, dict) and norm.get("kind") == "store" else None


def apply(sae: SparseAutoencoder, stats: dict) -> None:
    """Make ``sae`` standardise its inputs with ``stats`` (a dimension that never varies is only centred)."""
    std = np.asarray(stats["std"])
    sae.set_affine_input_norm(np.asarray(stats["mean"]), 1.0 / np.where(std > 0, std, 1.0))
