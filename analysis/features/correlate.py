"""Cross-model feature correlation (Zhu & Graves): Pearson r of every A feature with every B feature
over the images two stores share, from the cached sparse per-image values.

Memory: both sides' per-image values over the shared images as sparse rows (8 bytes per non-zero
value) plus one float64 (live A × live B) matrix; never a dense (images × features) matrix.
"""

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from scipy.optimize import linear_sum_assignment

from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes

BEST = 5
ROWS_PER_BLOCK = 1024
# A sparse·sparse product costs about this many dense multiply-adds per pair of non-zeros it
# multiplies (scipy's product plus the scatter into the dense sums, against torch's float32 matmul,
# both measured on a 2-core CPU); blocks sparser than that take the sparse path.
SPARSE_PAIR_COST = 4000
FLUSH_BLOCKS = 8
MAX_DIFF_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class KeyJoin:
    """The images two stores share: row r is A's image ``rows_a[r]`` and B's image ``rows_b[r]``, in A's order."""

    rows_a: np.ndarray
    rows_b: np.ndarray
    duplicate_keys_a: int
    duplicate_keys_b: int

    @property
    def n(self) -> int:
        return len(self.rows_a)


def join_on_keys(keys_a: np.ndarray, keys_b: np.ndarray) -> KeyJoin:
    """Pair images by webdataset key; a key repeated within a store counts once, at its first image."""
    keys_a, keys_b = np.asarray(keys_a, dtype=str), np.asarray(keys_b, dtype=str)
    _, ia, ib = np.intersect1d(keys_a, keys_b, assume_unique=False, return_indices=True)
    order = np.argsort(ia, kind="stable")
    return KeyJoin(ia[order].astype(np.int64), ib[order].astype(np.int64),
                   len(keys_a) - len(np.unique(keys_a)), len(keys_b) - len(np.unique(keys_b)))


@dataclass(frozen=True)
class SharedValues:
    """One side's per-image feature values over the shared images: CSR rows in join order, only values > 0."""

    indptr: np.ndarray
    latents: np.ndarray
    values: np.ndarray
    n_features: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def rows_of_entries(self, r0: int = 0, r1: int | None = None) -> np.ndarray:
        r1 = self.n_rows if r1 is None else r1
        return np.repeat(np.arange(r0, r1), np.diff(self.indptr[r0:r1 + 1]))

    def block(self, r0: int, r1: int, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row − r0, column, value) of rows r0…r1's entries; ``columns[f]`` is feature f's column, −1 to leave it out."""
        e0, e1 = self.indptr[r0], self.indptr[r1]
        col = columns[self.latents[e0:e1]]
        keep = col >= 0
        return self.rows_of_entries(r0, r1)[keep] - r0, col[keep], self.values[e0:e1][keep]

    def dense(self, r0: int, r1: int, columns: np.ndarray, width: int, device: torch.device) -> torch.Tensor:
        """Rows r0…r1 as a dense (rows, width) float32 tensor, columns as in :meth:`block`."""
        rows, cols, vals = self.block(r0, r1, columns)
        out = torch.zeros(r1 - r0, width, dtype=torch.float32, device=device)
        out[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)] = torch.from_numpy(vals).to(device)
        return out


def shared_values(codes: Codes, by: str, row_of_image: np.ndarray, n_rows: int) -> SharedValues:
    """Stream ``codes`` once and keep the values of the images that have a join row (``row_of_image`` ≥ 0)."""
    blocks, counts = [], np.zeros(n_rows, dtype=np.int64)
    for block in codes.iter_images(by):
        sizes = np.diff(block.offsets)
        rows = np.repeat(row_of_image[block.images_I], sizes)
        rank = np.arange(len(rows)) - np.repeat(block.offsets[:-1], sizes)
        keep = rows >= 0
        if keep.any():
            blocks.append((rows[keep], rank[keep], block.latents_E[keep].astype(np.int32), block.values_E[keep]))
            counts += np.bincount(rows[keep], minlength=n_rows)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    latents = np.empty(indptr[-1], dtype=np.int32)
    values = np.empty(indptr[-1], dtype=np.float32)
    # Each image's entries arrive together, so a row's entries land at its start plus their rank.
    while blocks:
        rows, rank, lat, val = blocks.pop()
        dest = indptr[rows] + rank
        latents[dest], values[dest] = lat, val
    return SharedValues(indptr, latents, values, codes.d_sae)


@dataclass(frozen=True)
class FeatureMoments:
    """Per-feature moments over the shared images (zeros included); ``live`` excludes features constant there."""

    fired_F: np.ndarray
    mean_F: np.ndarray
    std_F: np.ndarray
    live_F: np.ndarray

    @property
    def n_constant(self) -> int:
        return int((~self.live_F).sum())


def feature_moments(v: SharedValues) -> FeatureMoments:
    n = v.n_rows
    fired = np.bincount(v.latents, minlength=v.n_features)
    s = np.bincount(v.latents, weights=v.values, minlength=v.n_features)
    ss = np.bincount(v.latents, weights=np.square(v.values, dtype=np.float64), minlength=v.n_features)
    mean = s / n
    var = np.maximum(ss / n - mean**2, 0.0)
    # Values are > 0, so a feature that misses some image is constant only if it never fires;
    # one that fires on every image is constant when its smallest value equals its largest.
    live = (fired > 0) & (fired < n)
    everywhere = np.nonzero(fired == n)[0]
    if len(everywhere):
        mask = np.isin(v.latents, everywhere)
        lat, val = v.latents[mask], v.values[mask]
        hi = np.full(v.n_features, -np.inf)
        lo = np.full(v.n_features, np.inf)
        np.maximum.at(hi, lat, val)
        np.minimum.at(lo, lat, val)
        live[everywhere] = hi[everywhere] > lo[everywhere]
    return FeatureMoments(fired, mean, np.sqrt(var), live)


def _columns(keep_F: np.ndarray) -> np.ndarray:
    """Each kept feature's column among the kept ones, in order; −1 for the others."""
    col = np.full(len(keep_F), -1, dtype=np.int64)
    col[keep_F] = np.arange(int(keep_F.sum()))
    return col


def _sparse_block(v: SharedValues, r0: int, r1: int, columns: np.ndarray, n_cols: int) -> scipy.sparse.csr_matrix:
    rows, cols, vals = v.block(r0, r1, columns)
    return scipy.sparse.csr_matrix((vals.astype(np.float64), (rows, cols)), shape=(r1 - r0, n_cols))


def correlation_matrix(a: SharedValues, b: SharedValues, ma: FeatureMoments, mb: FeatureMoments,
                       device: torch.device, rows_per_block: int = ROWS_PER_BLOCK, path: str = "auto") -> torch.Tensor:
    """Pearson r of every live A feature (rows) with every live B feature (columns), float64.

    Accumulates Σ(a−μa)(b−μb) block by block: dense blocks are centred and multiplied in float32;
    sparse blocks multiply the raw values in float64 and get their centring as rank-one terms at
    the end. ``path`` forces ``dense`` or ``sparse`` (for tests).
    """
    col_a, col_b = _columns(ma.live_F), _columns(mb.live_F)
    fa, fb, n = int(ma.live_F.sum()), int(mb.live_F.sum()), a.n_rows
    mu_a = torch.from_numpy(ma.mean_F[ma.live_F]).to(device)
    mu_b = torch.from_numpy(mb.mean_F[mb.live_F]).to(device)
    cov = torch.zeros(fa, fb, dtype=torch.float64, device=device)
    # Dense products accumulate in place in float32 (no per-block product matrix) and are added
    # into the float64 sums every FLUSH_BLOCKS blocks, which bounds float32's accumulated error.
    acc = None
    pending = 0
    raw_sum_a = torch.zeros(fa, dtype=torch.float64, device=device)
    raw_sum_b = torch.zeros(fb, dtype=torch.float64, device=device)
    raw_rows = 0
    nnz_a, nnz_b = np.diff(a.indptr), np.diff(b.indptr)
    for r0 in range(0, n, rows_per_block):
        r1 = min(n, r0 + rows_per_block)
        pairs = float(np.dot(nnz_a[r0:r1].astype(np.float64), nnz_b[r0:r1]))
        sparse = path == "sparse" or (path == "auto" and device.type == "cpu"
                                      and pairs * SPARSE_PAIR_COST < (r1 - r0) * fa * fb)
        if sparse:
            sa, sb = _sparse_block(a, r0, r1, col_a, fa), _sparse_block(b, r0, r1, col_b, fb)
            prod = (sa.T.tocsr() @ sb).tocoo()
            cov.numpy()[prod.row, prod.col] += prod.data
            raw_sum_a += torch.from_numpy(np.asarray(sa.sum(0)).ravel())
            raw_sum_b += torch.from_numpy(np.asarray(sb.sum(0)).ravel())
            raw_rows += r1 - r0
        else:
            da = a.dense(r0, r1, col_a, fa, device) - mu_a.float()
            db = b.dense(r0, r1, col_b, fb, device) - mu_b.float()
            if acc is None:
                acc = torch.zeros(fa, fb, dtype=torch.float32, device=device)
            acc.addmm_(da.T, db)
            pending += 1
            if pending == FLUSH_BLOCKS:
                cov.add_(acc)
                acc.zero_()
                pending = 0
    if pending:
        cov.add_(acc)
    del acc
    if raw_rows:
        cov.addr_(mu_a, raw_sum_b, alpha=-1.0).addr_(raw_sum_a, mu_b, alpha=-1.0).addr_(mu_a, mu_b, alpha=float(raw_rows))
    sd_a = torch.from_numpy(ma.std_F[ma.live_F]).to(device)
    sd_b = torch.from_numpy(mb.std_F[mb.live_F]).to(device)
    return cov.div_(n).div_(sd_a[:, None]).div_(sd_b[None, :]).clamp_(-1.0, 1.0)


@dataclass(frozen=True)
class BestMatches:
    """Each live A feature's ``BEST`` most correlated live B features, best first (live indices)."""

    b_AR: np.ndarray
    corr_AR: np.ndarray


def best_matches(corr: torch.Tensor, n_best: int = BEST, rows_per_block: int = 4096) -> BestMatches:
    n_best = min(n_best, corr.shape[1])
    idx, val = [], []
    for r0 in range(0, corr.shape[0], rows_per_block):
        top = torch.topk(corr[r0:r0 + rows_per_block], n_best, dim=1)
        idx.append(top.indices.cpu().numpy())
        val.append(top.values.cpu().numpy())
    b, c = (np.concatenate(idx), np.concatenate(val)) if idx else (np.zeros((0, n_best), int), np.zeros((0, n_best)))
    # torch.topk leaves the order of equal values open: order them by B feature.
    order = np.lexsort((b, -c), axis=1) if b.size else np.zeros_like(b)
    return BestMatches(np.take_along_axis(b, order, 1), np.take_along_axis(c, order, 1))


def one_to_one(corr: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(A rows, B columns) of the one-to-one pairing with the largest total correlation (Hungarian)."""
    return linear_sum_assignment(corr.cpu().numpy(), maximize=True)


def max_abs_diff(a: SharedValues, b: SharedValues, pairs_a: np.ndarray, pairs_b: np.ndarray,
                 device: torch.device) -> np.ndarray:
    """max over shared images of |a_i − b_j| for each pair (i, j) of feature indices, zeros included."""
    n_pairs = len(pairs_a)
    out = torch.zeros(n_pairs, dtype=torch.float32, device=device)
    if not n_pairs:
        return out.cpu().numpy()
    ua, ia = np.unique(pairs_a, return_inverse=True)
    ub, ib = np.unique(pairs_b, return_inverse=True)
    col_a, col_b = _columns(np.isin(np.arange(a.n_features), ua)), _columns(np.isin(np.arange(b.n_features), ub))
    ia_t, ib_t = torch.from_numpy(ia).to(device), torch.from_numpy(ib).to(device)
    step = max(1, MAX_DIFF_ELEMENTS // n_pairs)
    for r0 in range(0, a.n_rows, step):
        r1 = min(a.n_rows, r0 + step)
        da, db = a.dense(r0, r1, col_a, len(ua), device), b.dense(r0, r1, col_b, len(ub), device)
        torch.maximum(out, (da[:, ia_t] - db[:, ib_t]).abs_().amax(0), out=out)
    return out.cpu().numpy()


def top_rows(v: SharedValues, k: int) -> list[np.ndarray]:
    """Each feature's k shared rows of largest value (ties to the earlier row), as a list indexed by feature."""
    rows = v.rows_of_entries()
    order = np.lexsort((rows, -v.values, v.latents))
    lat = v.latents[order]
    first = np.searchsorted(lat, lat, side="left")
    sel = np.arange(len(order)) - first < k
    lat, rows = lat[sel], rows[order][sel]
    bounds = np.searchsorted(lat, np.arange(v.n_features + 1))
    return [rows[bounds[f]:bounds[f + 1]] for f in range(v.n_features)]


def topk_overlap(top_a: list[np.ndarray], top_b: list[np.ndarray], pairs_a: np.ndarray, pairs_b: np.ndarray,
                 k: int) -> np.ndarray:
    """|top-k rows of a ∩ top-k rows of b| / k for each pair."""
    return np.array([len(np.intersect1d(top_a[i], top_b[j], assume_unique=True)) / k
                     for i, j in zip(pairs_a, pairs_b)], dtype=np.float64)


def check_shared(join: KeyJoin, name_a: str, name_b: str) -> None:
    if join.n == 0:
        raise ClipsaeError(f"{name_a} and {name_b} share no image keys; correlate needs the same images in both stores")
