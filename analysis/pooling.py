"""From a batch of whole images' token codes to what the codes cache keeps (store/codes.py).

Everything is computed on the SAE's device from sparse codes; no (tokens, latents) matrix is made.
"""

import torch

from clipsae.host_sync import declared
from clipsae.store.codes import CodesBlock
from clipsae.train.codes import SparseCodes


def _rows_in_descending_order(rows: torch.Tensor, vals: torch.Tensor) -> torch.Tensor:
    """An order of the entries by row, and within a row by value descending (ties keep entry order).

    TopK's codes already come so (``train/topk.py``'s ``topk_sorted``), and are checked rather than sorted again.
    """
    same_row = rows[1:] == rows[:-1]
    if bool(((vals[1:] <= vals[:-1]) | ~same_row).all()) and bool((rows[1:] >= rows[:-1]).all()):
        return torch.arange(len(rows), device=rows.device)
    by_value = torch.sort(vals, descending=True, stable=True).indices
    return by_value[torch.sort(rows[by_value], stable=True).indices]


def pool_batch(codes: SparseCodes, n_images: int, positions_T: torch.Tensor, d_sae: int, width: int,
               cls_position: int | None) -> tuple[CodesBlock, dict[str, torch.Tensor]]:
    """:func:`_pool_batch`, whose codes go to the host to be written, sized by how many distinct latents
    each image has: the one place of a batch that reads back (the host needs the codes to write them)."""
    with declared("the codes go to the host to be written; each image's distinct latents size them"):
        return _pool_batch(codes, n_images, positions_T, d_sae, width, cls_position)


def _pool_batch(codes: SparseCodes, n_images: int, positions_T: torch.Tensor, d_sae: int, width: int,
                cls_position: int | None) -> tuple[CodesBlock, dict[str, torch.Tensor]]:
    """The cached form of the codes of ``n_images`` whole images of T token rows each.

    Row r is stored token ``positions_T[r % T]`` of image r // T. ``width`` caps the latents kept
    per token (the largest); per-image values and the per-latent sums (returned as tensors on
    the codes' device, named as in :class:`PartSums`) use every active latent.
    ``cls_position``: the row offset (r % T) of the CLS token, if it was encoded.
    """
    dev = codes.vals.device
    n_positions = len(positions_T)
    n_rows = n_images * n_positions
    rows, cols, vals = codes.rows, codes.cols, codes.vals.float()
    active_R = torch.bincount(rows, minlength=n_rows)

    # Per token: the `width` largest, in descending order.
    order = _rows_in_descending_order(rows, vals)
    first_of_row = torch.cumsum(active_R, 0) - active_R
    rank = torch.arange(len(order), device=dev) - first_of_row[rows[order]]
    keep = rank < width
    latents_RK = torch.full((n_rows, width), -1, dtype=torch.int32, device=dev)
    values_RK = torch.zeros((n_rows, width), dtype=torch.float32, device=dev)
    latents_RK[rows[order][keep], rank[keep]] = cols[order][keep].int()
    values_RK[rows[order][keep], rank[keep]] = vals[order][keep]

    # Per (image, latent): one sort of the keys, then segment reductions. The argmax token is
    # the first position holding the maximum.
    pos = rows % n_positions
    uniq, segment = torch.unique((rows // n_positions) * d_sae + cols, sorted=True, return_inverse=True)
    n_e = len(uniq)
    image_E, latent_E = uniq // d_sae, uniq % d_sae
    max_E = torch.zeros(n_e, dtype=torch.float32, device=dev).scatter_reduce_(0, segment, vals, "amax", include_self=False)
    at_max = vals == max_E[segment]
    argmax_E = torch.full((n_e,), n_positions, dtype=torch.int64, device=dev).scatter_reduce_(
        0, segment[at_max], pos[at_max], "amin", include_self=True)
    sum_E = torch.zeros(n_e, dtype=torch.float64, device=dev).index_add_(0, segment, vals.double())
    cls_E = None
    if cls_position is not None:
        on_cls = pos == cls_position
        cls_E = torch.zeros(n_e, dtype=torch.float32, device=dev).index_add_(0, segment[on_cls], vals[on_cls])

    block = CodesBlock(
        token_latents_RK=latents_RK.cpu().numpy(),
        token_values_RK=values_RK.cpu().numpy(),
        token_active_R=active_R.int().cpu().numpy(),
        image_counts_I=torch.bincount(image_E, minlength=n_images).int().cpu().numpy(),
        image_latents_E=latent_E.int().cpu().numpy(),
        image_max_E=max_E.cpu().numpy(),
        image_argmax_E=positions_T[argmax_E].int().cpu().numpy(),
        image_sum_E=sum_E.float().cpu().numpy(),
        image_cls_E=None if cls_E is None else cls_E.cpu().numpy(),
    )
    latent_sums = {
        "latent_tokens_fired": torch.bincount(cols, minlength=d_sae),
        "latent_images_fired": torch.bincount(latent_E, minlength=d_sae),
        "latent_sum": torch.zeros(d_sae, dtype=torch.float64, device=dev).index_add_(0, cols, vals.double()),
        "latent_sumsq": torch.zeros(d_sae, dtype=torch.float64, device=dev).index_add_(0, cols, vals.double() ** 2),
    }
    return block, latent_sums


def reconstruction_sums(x_RD: torch.Tensor, x_hat_RD: torch.Tensor, n_positions: int) -> dict[str, torch.Tensor]:
    """Per token position: Σ‖x − x̂‖², Σ‖x‖² and Σx, summed in float64 (for MSE and FVU per position).

    Each row's squared norm is computed in float32 (d terms); only the sums over rows need float64.
    """
    d = x_RD.shape[1]
    err_R = (x_RD - x_hat_RD).pow_(2).sum(1)
    return {"position_sq_err": err_R.view(-1, n_positions).sum(0, dtype=torch.float64),
            "position_x_sq": x_RD.pow(2).sum(1).view(-1, n_positions).sum(0, dtype=torch.float64),
            "position_x_sum": x_RD.view(-1, n_positions, d).sum(0, dtype=torch.float64)}
