"""Each row's k largest values in two passes: the selection of TopK-style codes, in training and inference.

Importing this module imports torch and nothing of training.
"""

import torch


def topk_columns(z_BN: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k): the columns of each row's k largest values, in no order, as ``torch.topk`` finds them.

    In two passes instead of one over all n columns: column j is put in block j mod m (s = n/m columns
    each), and the k blocks of largest maxima hold the row's k largest values. A block holding one of
    them has a maximum that fewer than k other blocks exceed, each by a value larger than that one, which
    is itself among the k largest. So the k largest of the k·s columns of those blocks are the row's.
    The block maxima are one pass over z; ranking n/s maxima and then k·s values costs far less than
    ranking n values (docs/benchmarks.md: 50 against 64 ms at 12,288 columns, 107 against 264 ms at
    65,536, k = 32, on a 2-core CPU; BatchTopK's one row of B·n, 120 against 464 ms). Values that tie
    may be taken from other columns than torch.topk would take them: the values are the same.
    """
    B, n = z_BN.shape
    s = 16 if n >= 2048 * k else 8
    if n % s or n // s < 2 * k:
        return z_BN.topk(k, dim=1, sorted=False).indices
    m = n // s
    blocks_BK = z_BN.view(B, s, m).amax(1).topk(k, dim=1, sorted=False).indices
    candidates = (blocks_BK.unsqueeze(2) + torch.arange(0, n, m, device=z_BN.device)).view(B, k * s)
    return candidates.gather(1, z_BN.gather(1, candidates).topk(k, dim=1, sorted=False).indices)


def topk_sorted(z_BN: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, columns), each (B, k): each row's k largest values, largest first, equal values in column
    order. torch.topk leaves ties in no set order, and one that differs between devices; stored codes
    and the per-image pooling, which takes each row's codes largest first, get one order everywhere.
    Found by :func:`topk_columns`; then only the k of each row are sorted."""
    cols_BK = topk_columns(z_BN, k).sort(dim=1).values
    vals_BK, order = z_BN.gather(1, cols_BK).sort(dim=1, descending=True, stable=True)
    return vals_BK, cols_BK.gather(1, order)
