"""A feature's code over an image's patch grid, read from the cached per-token codes (not recomputed)."""

import numpy as np

from clipsae.store.codes import Codes
from clipsae.store.layout import HookLayout


def grid_cells(positions_T: np.ndarray, layout: HookLayout) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) on the patch grid of each stored token position; −1 for CLS, registers or tokens of no grid."""
    rows = np.full(len(positions_T), -1)
    cols = np.full(len(positions_T), -1)
    if layout.grid is not None:
        patch = np.asarray(positions_T) - layout.prefix
        on_grid = patch >= 0
        rows[on_grid], cols[on_grid] = np.divmod(patch[on_grid], layout.grid[1])
    return rows, cols


def token_roles(positions_T: np.ndarray, layout: HookLayout) -> list[str]:
    """What each stored token position is: ``cls``, ``register1``… (in the model's order), ``patch``, or
    ``token`` where the hook's tokens have no known layout."""
    roles = []
    for p in np.asarray(positions_T).tolist():
        if layout.cls_token and p == 0:
            roles.append("cls")
        elif p < layout.prefix:
            roles.append(f"register{p - int(layout.cls_token) + 1}")
        else:
            roles.append("patch" if layout.grid is not None else "token")
    return roles


def cell_of_token(positions_T: np.ndarray, layout: HookLayout) -> np.ndarray:
    """The patch-grid cell (row-major) of each stored token position; −1 for CLS, registers or tokens of no grid."""
    rows_T, cols_T = grid_cells(positions_T, layout)
    width = layout.grid[1] if layout.grid is not None else 0
    return np.where(rows_T >= 0, rows_T * width + cols_T, -1)


def token_maps(latents_TK: np.ndarray, values_TK: np.ndarray, feature_P: np.ndarray, scale_P: np.ndarray,
               cell_T: np.ndarray, n_cells: int) -> np.ndarray:
    """(features, n_cells) uint8 from one image's token codes: feature_P[p]'s code on each cell, as
    round(255 · code / scale_P[p]) clipped to 0…255; cells no token covers are 0."""
    on_grid = cell_T >= 0
    lat, val = latents_TK[on_grid], values_TK[on_grid]
    hit_TKP = lat[:, :, None] == np.asarray(feature_P)[None, None, :]
    code_TP = (val[:, :, None] * hit_TKP).sum(1)
    out = np.zeros((len(feature_P), n_cells), dtype=np.uint8)
    scaled = np.rint(255 * code_TP / np.asarray(scale_P)[None, :])
    out[:, cell_T[on_grid]] = np.clip(scaled, 0, 255).astype(np.uint8).T
    return out


def patch_maps(codes: Codes, feature_P: np.ndarray, image_P: np.ndarray, scale_P: np.ndarray) -> np.ndarray:
    """(pairs, grid rows · grid cols) uint8: feature_P[p]'s code on each patch of image_P[p], as
    round(255 · code / scale_P[p]) clipped to 0…255, row-major; patches not encoded are 0.

    Reads each image's token codes once, in one pass over the store's chunks.
    """
    layout = codes.store.layout(codes.hook)
    cell_T = cell_of_token(codes.token_positions, layout)
    n_cells = layout.grid[0] * layout.grid[1] if layout.grid is not None else 0
    out = np.zeros((len(feature_P), n_cells), dtype=np.uint8)
    if not n_cells or not len(feature_P):
        return out
    order = np.argsort(image_P, kind="stable")
    images, starts = np.unique(image_P[order], return_index=True)
    bounds = np.append(starts, len(order))
    for j, (img, lat_TK, val_TK) in enumerate(codes.iter_token_codes(images)):
        pairs = order[bounds[j]:bounds[j + 1]]
        out[pairs] = token_maps(lat_TK, val_TK, feature_P[pairs], scale_P[pairs], cell_T, n_cells)
    return out
