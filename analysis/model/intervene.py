"""Interventions: change SAE features inside the model and measure what changes downstream.

At the codes' hook, the tokens the codes cover are replaced by x + (x̂′ − x̂): x̂ = SAE(x), and x̂′ the
SAE's reconstruction of the edited codes. The SAE's error term x − x̂ stays, so an edit that changes
nothing reproduces the model's own activations bit for bit; the forward pass then finishes. Measured
per image: the cosine of the edited image embedding to the original, and zero-shot class
probabilities (softmax of the model's logit scale × cosine with "a photo of a {class}.") before and
after. ``keep_top``: PatchSAE's test, each token keeps only its K largest features.
"""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from clipsae.analysis.edits import Edit
from clipsae.analysis.model.joint_space import points_to_joint
from clipsae.analysis.model.splice import POOLED, model_positions, replaced
from clipsae.errors import ClipsaeError
from clipsae.pipeline.hooks import HookedForward, resolve_hooks, tower_for
from clipsae.train.codes import SparseCodes, row_offsets
from clipsae.train.model import SparseAutoencoder

WHERE = ("all", "cls", "patches", "firing")


@dataclass(frozen=True)
class Change:
    """What to do to each token's codes: ``edits`` on the tokens ``where`` names, or keep each token's
    ``keep_top`` largest features (None: no such cut). ``prefix``: how many of the model's tokens come
    before the patches (the CLS token and registers), which ``where="patches"`` leaves alone."""

    edits: tuple[Edit, ...] = ()
    where: str = "all"
    keep_top: int | None = None
    prefix: int = 1


def _rows_allowed(n_rows: int, positions: torch.Tensor, where: str, prefix: int) -> torch.Tensor:
    """Which rows (token rows of whole images, positions repeating) the edit may touch."""
    pos = positions.repeat(n_rows // len(positions))
    if where == "cls":
        return pos == 0
    if where == "patches":
        return pos >= prefix
    return torch.ones(n_rows, dtype=torch.bool, device=positions.device)


def edit_codes(codes: SparseCodes, change: Change, positions: torch.Tensor) -> SparseCodes:
    """The codes after ``change``. A clamp (``F=V``), or a set to a non-zero value, also adds the
    feature where it was silent, except under ``where="firing"``."""
    rows, cols, vals = codes.rows, codes.cols, codes.vals.clone()
    n_rows = codes.n_rows
    if change.keep_top is not None:
        # Entries of a row come in any order: rank them by value within their row.
        order = torch.sort(vals, descending=True, stable=True).indices
        order = order[torch.sort(rows[order], stable=True).indices]
        rank = torch.arange(len(order), device=rows.device) - torch.searchsorted(rows[order], rows[order])
        keep = torch.zeros(len(vals), dtype=torch.bool, device=vals.device)
        keep[order[rank < change.keep_top]] = True
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    allowed = _rows_allowed(n_rows, positions, change.where, change.prefix)
    added_rows, added_cols, added_vals = [], [], []
    for e in change.edits:
        hit = (cols == e.feature) & allowed[rows]
        vals = torch.where(hit, vals * e.value if e.kind == "scale" else torch.full_like(vals, e.value), vals)
        if change.where != "firing" and e.kind != "scale" and e.value != 0:
            silent = allowed.clone()
            silent[rows[cols == e.feature]] = False
            r = silent.nonzero(as_tuple=True)[0]
            added_rows.append(r)
            added_cols.append(torch.full_like(r, e.feature))
            added_vals.append(torch.full((len(r),), e.value, dtype=vals.dtype, device=vals.device))
    if added_rows:
        rows = torch.cat([rows, *added_rows])
        cols = torch.cat([cols, *added_cols])
        vals = torch.cat([vals, *added_vals])
    order = torch.sort(rows, stable=True).indices
    rows, cols, vals = rows[order], cols[order], vals[order]
    return SparseCodes(rows, cols, vals, row_offsets(rows, n_rows))


def intervened(sae: SparseAutoencoder, x_NPD: torch.Tensor, change: Change, positions: torch.Tensor) -> torch.Tensor:
    """x + (x̂′ − x̂) for the tokens ``x_NPD`` (images, positions, d)."""
    flat = x_NPD.reshape(-1, x_NPD.shape[-1]).float()
    codes = sae.encode_sparse(flat)
    delta = sae.reconstruct_sparse(flat, edit_codes(codes, change, positions)) - sae.reconstruct_sparse(flat, codes)
    return (flat + delta).to(x_NPD.dtype).reshape(x_NPD.shape)


def edited_positions(visual: nn.Module, store, codes, where: str) -> np.ndarray:
    """The model's token indices of the codes' tokens (see splice's ``model_positions``, which refuses a
    hook the model cannot be re-run from); one line where ``where`` makes no sense at the hook."""
    positions = model_positions(visual, store, codes)
    if codes.hook not in POOLED and where in ("cls", "patches"):
        tower = tower_for(visual)
        if not tower.resolve(codes.hook).prefixed:
            raise ClipsaeError(f"--where {where}: hook {codes.hook} is a feature map, with no CLS token and nothing "
                               f"but positions; use --where all or firing")
        if where == "cls" and not (tower.has_cls and 0 in positions):
            why = "the tower has no CLS token" if not tower.has_cls else "the codes hold no CLS token"
            raise ClipsaeError(f"--where cls: {why}; use --where patches, all or firing")
    return positions


@torch.no_grad()
def image_embeddings(visual: nn.Module, hook: str, model_positions: np.ndarray, sae: SparseAutoencoder,
                     change: Change, images_NCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(original, edited) image embeddings of a batch."""
    pos = torch.as_tensor(model_positions, device=images_NCHW.device)
    if hook in POOLED:
        pooled = HookedForward(visual, resolve_hooks(visual, [hook], "all"), "all")(images_NCHW)[hook]
        edited = intervened(sae, pooled, change, torch.zeros(1, dtype=torch.long, device=pooled.device))
        return points_to_joint(pooled[:, 0], visual, hook), points_to_joint(edited[:, 0], visual, hook)
    original = visual(images_NCHW)
    with replaced(visual, hook, model_positions, lambda x: intervened(sae, x, change, pos)):
        edited = visual(images_NCHW)
    return original, edited
