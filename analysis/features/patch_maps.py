"""A feature's code over an image's patch grid, read from the cached per-token codes (not recomputed)."""

import numpy as np

from clipsae.store.codes import Codes
from clipsae.store.layout import HookLayout


def grid_cells(positions_T: np.ndarray, layout: HookLayout) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) on the patch grid of each stored token position; −1 for CLS or tokens of no grid."""
    rows = np.full(len(positions_T), -1)
    cols = np.full(len(positions_T), -1)
    if layout.grid is not None:
        patch = np.asarray(positions_T) - int(layout.cls_token)
        on_grid = patch >= 0
        rows[on_grid], cols[on_grid] = np.divmod(patch[on_grid], layout.grid[1])
    return rows, cols


def patch_maps(codes: Codes, feature_P: np.ndarray, image_P: np.ndarray, scale_P: np.ndarray) -> np.ndarray:
    """(pairs, grid rows · grid cols) uint8: feature_P[p]'s code on each patch of image_P[p], as
    round(255 · code / scale_P[p]) clipped to 0…255, row-major; patches not encoded are 0.

    Reads each image's token codes once, in one pass over the store's chunks.
    """
    layout = codes.store.layout(codes.hook)
    rows_T, cols_T = grid_cells(codes.token_positions, layout)
    on_grid = rows_T >= 0
    width = layout.grid[1] if layout.grid is not None else 0
    cell_T = (rows_T * width + cols_T)[on_grid]
    n_cells = layout.grid[0] * layout.grid[1] if layout.grid is not None else 0
    out = np.zeros((len(feature_P), n_cells), dtype=np.uint8)
    if not n_cells or not len(feature_P):
        return out
    order = np.argsort(image_P, kind="stable")
    images, starts = np.unique(image_P[order], return_index=True)
    bounds = np.append(starts, len(order))
    for j, (img, lat_TK, val_TK) in enumerate(codes.iter_token_codes(images)):
        pairs = order[bounds[j]:bounds[j + 1]]
        lat, val = lat_TK[on_grid], val_TK[on_grid]
        hit_TKP = lat[:, :, None] == feature_P[pairs][None, None, :]
        code_TP = (val[:, :, None] * hit_TKP).sum(1)
        scaled = np.rint(255 * code_TP / scale_P[pairs][None, :])
        out[pairs[:, None], cell_T[None, :]] = np.clip(scaled, 0, 255).astype(np.uint8).T
    return out
