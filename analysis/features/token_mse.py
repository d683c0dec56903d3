"""Reconstruction error per token position (CLIP-Scope's heat map), from the cached sums.

Per position t over the N encoded images (d dimensions): MSE_t = Σ‖x − x̂‖² / (N·d) and
FVU_t = Σ‖x − x̂‖² / Σ‖x − x̄_t‖², with x̄_t the mean input at t. Overall FVU uses the mean over all tokens.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsae.analysis.features.fit import overall_fvu
from clipsae.analysis.features.patch_maps import grid_cells, token_roles
from clipsae.errors import ClipsaeError
from clipsae.store.codes import PartSums
from clipsae.store.layout import HookLayout
from clipsae.train.load import SNAPSHOTS


@dataclass(frozen=True)
class TokenMSE:
    positions_T: np.ndarray
    rows_T: np.ndarray  # patch-grid row, −1 for CLS, registers or tokens of no known layout
    cols_T: np.ndarray
    roles_T: list[str]  # cls, register1…, patch or token (patch_maps.token_roles)
    mse_T: np.ndarray
    fvu_T: np.ndarray
    mse: float
    fvu: float


def token_mse(sums: PartSums, positions_T: np.ndarray, layout: HookLayout) -> TokenMSE:
    """MSE and FVU per encoded token position and overall; refuses codes of a single token."""
    if len(positions_T) < 2:
        raise ClipsaeError("token-mse needs codes of several tokens per image; encode with --tokens all or patches")
    n, d = sums.n_images, sums.position_x_sum.shape[1]
    var_T = sums.position_x_sq - (sums.position_x_sum**2).sum(1) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        fvu_T = sums.position_sq_err / var_T
    rows, cols = grid_cells(positions_T, layout)
    return TokenMSE(positions_T, rows, cols, token_roles(positions_T, layout), sums.position_sq_err / (n * d), fvu_T,
                    float(sums.position_sq_err.sum() / (n * len(positions_T) * d)), overall_fvu(sums, len(positions_T)))


def off_grid_caption(t: TokenMSE, digits: int = 4) -> str:
    """The MSE of the tokens off the patch grid, the CLS token's and each register's: ``CLS 0.12, reg1 0.3``."""
    shown = [(("CLS" if role == "cls" else role.replace("register", "reg")), m)
             for role, m in zip(t.roles_T, t.mse_T.tolist()) if role == "cls" or role.startswith("register")]
    return ", ".join(f"{name} {m:.{digits}g}" for name, m in shown)


def plot_token_mse(t: TokenMSE, grid: tuple[int, int] | None, path, title: str) -> None:
    """Heat map of MSE over the patch grid (the CLS token's and the registers' MSE in the title, apart from
    the grid's scale: registers carry outliers that would wash it out), or a bar per token without a grid."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    on_grid = t.rows_T >= 0
    if grid is not None and on_grid.any():
        heat = np.full(grid, np.nan)
        heat[t.rows_T[on_grid], t.cols_T[on_grid]] = t.mse_T[on_grid]
        im = ax.imshow(heat, cmap="magma")
        fig.colorbar(im, ax=ax, label="reconstruction MSE")
        ax.set_xlabel("patch column")
        ax.set_ylabel("patch row")
        if off_grid_caption(t):
            title += f"\nMSE off the grid: {off_grid_caption(t)}"
    else:
        ax.bar(t.positions_T, t.mse_T)
        ax.set_xlabel("token")
        ax.set_ylabel("reconstruction MSE")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def snapshot_title(name: str, sae_path: str | None) -> str:
    """A panel's title: the codes' name, and the tokens trained where the SAE is a training snapshot
    (``…/snapshots/<tokens>``)."""
    if sae_path:
        folder = Path(sae_path)
        if folder.parent.name == SNAPSHOTS and folder.name.isdigit():
            return f"{name}: {int(folder.name):,} tokens"
    return name


def plot_token_mse_series(results: list[TokenMSE], titles: list[str], grid: tuple[int, int], path, title: str) -> None:
    """CLIP-Scope's figure: one MSE heat map over the patch grid per codes (snapshots of a run, in the
    order given), on one colour scale so that training progress shows as the maps darken."""
    from clipsae.analysis.output import pyplot

    plt = pyplot()
    n = len(results)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows + 0.6), squeeze=False)
    on = [r.rows_T >= 0 for r in results]
    vmax = max(float(r.mse_T[m].max()) for r, m in zip(results, on))
    for ax, r, m, t in zip(axes.flat, results, on, titles):
        heat = np.full(grid, np.nan)
        heat[r.rows_T[m], r.cols_T[m]] = r.mse_T[m]
        im = ax.imshow(heat, cmap="magma", vmin=0, vmax=vmax)
        ax.set_title(t + (f"\n{off_grid_caption(r, 3)}" if off_grid_caption(r) else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), label="reconstruction MSE", shrink=0.8)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
