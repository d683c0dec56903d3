"""Each feature's nearest features by decoder cosine: cos(W_dec[i], W_dec[j]), j ≠ i."""

from dataclasses import dataclass

import torch

SIMS_PER_BLOCK = 2**26  # a block's (rows × features) cosines: 256 MiB of float32


@dataclass(frozen=True)
class Nearest:
    features_FN: torch.Tensor  # (features, n) neighbour indices, most similar first
    cosine_FN: torch.Tensor


def nearest_features(W_dec_FD: torch.Tensor, n: int) -> Nearest:
    """The ``n`` features whose decoder directions have the largest cosine with each feature's.

    Block by block, so a block's cosines stay near SIMS_PER_BLOCK values whatever the dictionary's size.
    """
    w = torch.nn.functional.normalize(W_dec_FD.detach().float(), dim=1)
    n_f = w.shape[0]
    n = min(n, n_f - 1)
    idx = torch.empty((n_f, n), dtype=torch.int64)
    cos = torch.empty((n_f, n), dtype=torch.float32)
    rows_per_block = max(1, SIMS_PER_BLOCK // n_f)
    for s in range(0, n_f, rows_per_block):
        sims = w[s:s + rows_per_block] @ w.T
        rows = torch.arange(sims.shape[0])
        sims[rows, rows + s] = -torch.inf
        top = sims.topk(n, dim=1)
        idx[s:s + rows_per_block], cos[s:s + rows_per_block] = top.indices.cpu(), top.values.cpu()
    return Nearest(idx, cos)
