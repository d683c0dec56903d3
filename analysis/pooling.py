"""From a batch of whole images' token codes to what the codes cache keeps (store/codes.py).

Everything is computed on the SAE's device from sparse codes; no (tokens, latents) matrix is made.
"""

import torch

from clipsae.store.codes import CodesBlock
from clipsae.train.codes import SparseCodes


def _segments(keys: torch.Tensor, vals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Order entries by key, and within a key by value descending (ties keep entry order).

    Returns (order, unique keys, each entry's segment index in that order).
    """
    by_value = torch.sort(vals, descending=True, stable=True).indices
    order = by_value[torch.sort(keys[by_value], stable=True).indices]
    uniq, counts = torch.unique_consecutive(keys[order], return_counts=True)
    segment = torch.repeat_interleave(torch.arange(len(uniq), device=keys.device), counts)
    return order, uniq, segment


def pool_batch(codes: SparseCodes, n_images: int, positions_T: torch.Tensor, d_sae: int, width: int,
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
    order, _, _ = _segments(rows, vals)
    first_of_row = torch.cumsum(active_R, 0) - active_R
    rank = torch.arange(len(order), device=dev) - first_of_row[rows[order]]
    keep = rank < width
    latents_RK = torch.full((n_rows, width), -1, dtype=torch.int32, device=dev)
    values_RK = torch.zeros((n_rows, width), dtype=torch.float32, device=dev)
    latents_RK[rows[order][keep], rank[keep]] = cols[order][keep].int()
    values_RK[rows[order][keep], rank[keep]] = vals[order][keep]

    # Per image and latent: max (first token on ties), argmax token, sum, code on CLS.
    pos = rows % n_positions
    order, uniq, segment = _segments((rows // n_positions) * d_sae + cols, vals)
    starts = torch.cumsum(torch.bincount(segment, minlength=len(uniq)), 0)
    first = torch.cat([starts.new_zeros(1), starts[:-1]])
    image_E, latent_E = uniq // d_sae, uniq % d_sae
    sum_E = torch.zeros(len(uniq), dtype=torch.float64, device=dev).index_add_(0, segment, vals[order].double())
    cls_E = None
    if cls_position is not None:
        on_cls = pos[order] == cls_position
        cls_E = torch.zeros(len(uniq), dtype=torch.float32, device=dev).index_add_(0, segment[on_cls], vals[order][on_cls])

    block = CodesBlock(
        token_latents_RK=latents_RK.cpu().numpy(),
        token_values_RK=values_RK.cpu().numpy(),
        token_active_R=active_R.int().cpu().numpy(),
        image_counts_I=torch.bincount(image_E, minlength=n_images).int().cpu().numpy(),
        image_latents_E=latent_E.int().cpu().numpy(),
        image_max_E=vals[order][first].cpu().numpy(),
        image_argmax_E=positions_T[pos[order][first]].int().cpu().numpy(),
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
    """Per token position: Σ‖x − x̂‖², Σ‖x‖² and Σx in float64 (for MSE and FVU per position)."""
    x = x_RD.view(-1, n_positions, x_RD.shape[1])
    err = (x - x_hat_RD.view_as(x)).double().pow(2).sum(2).sum(0)
    return {"position_sq_err": err, "position_x_sq": x.double().pow(2).sum(2).sum(0), "position_x_sum": x.double().sum(0)}
