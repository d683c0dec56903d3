"""Input statistics computed once before training: the input scale s and the decoder bias's start."""

import math

import numpy as np
import torch

from clipsae.errors import ClipsaeError
from clipsae.train.data import RowSource

GM_ROWS = 2**14


def geometric_median(x_MD: torch.Tensor, iters: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's iteration for argmin_y Σ‖x_i − y‖, started at the mean."""
    x = x_MD.double()
    y = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - y).norm(dim=1).clamp_min(1e-12)
        y_new = (w[:, None] * x).sum(0) / w.sum()
        if (y_new - y).norm() <= tol * y.norm().clamp_min(1e-12):
            y = y_new
            break
        y = y_new
    return y.float()


def input_statistics(source: RowSource, max_rows: int, seed: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(s, geometric median of s·x, the sample of s·x it is the median of): s = √d / E‖x‖ over up to
    ``max_rows`` training rows; the sample holds min(rows read, 16,384) of them, 2,048 at most from each
    chunk where the chunks read allow, more from each where there are fewer than 8 (archetypal SAEs take
    their candidate points from it, and count on its size)."""
    rng = np.random.default_rng(seed)
    total, count, keep, spare = 0.0, 0, [], []
    for chunk, chunk_rows in source.iter_sample(seed):
        rows = torch.from_numpy(chunk_rows).float()
        if not len(rows):
            continue
        norms = rows.norm(dim=1)
        if not torch.isfinite(norms).all():
            part = source.store.parts[chunk.part].name
            raise ClipsaeError(f"hook {source.hook} has non-finite activations in images {chunk.start}-{chunk.stop - 1} "
                               f"(part {part}); cannot train. `clipsae store verify {source.store.path}` names every "
                               f"part that holds them")
        total += float(norms.double().sum())
        count += len(rows)
        order = torch.from_numpy(rng.permutation(len(rows)))
        keep.append(rows[order[: GM_ROWS // 8]])
        if sum(map(len, spare)) < GM_ROWS:
            spare.append(rows[order[GM_ROWS // 8: GM_ROWS]])
        if count >= max_rows:
            break
    mean_norm = total / count
    if not mean_norm > 0:
        raise ClipsaeError(f"hook {source.hook} is all zeros; nothing to train on")
    scale = math.sqrt(source.d) / mean_norm
    sample = torch.cat(keep)[:GM_ROWS]
    if len(sample) < min(count, GM_ROWS):
        sample = torch.cat([sample, torch.cat(spare)[: min(count, GM_ROWS) - len(sample)]])
    sample = sample * scale
    return scale, geometric_median(sample), sample
