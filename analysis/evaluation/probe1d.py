"""One-dimensional logistic probes of every (feature, class), fitted exactly over sparse feature values.

For feature f and class c, over N samples (patches) with values x_j (most of them 0) and labels
y_j = [sample j is class c]: p_j = σ(w·x_j + b), fitted by Newton's method on the summed binary
cross-entropy L(w, b) = Σ_j softplus(η_j) − y_j·η_j, η_j = w·x_j + b (plus λ/2·w², λ = :data:`RIDGE`,
which only keeps w finite where a feature separates a class perfectly). saev's probe1d: only the
nonzero values are visited; the N − n zeros of a feature share η = b, so their terms are closed forms.

Each Newton pass visits every nonzero entry once for every class, vectorised over features and
classes in blocks of at most :data:`BLOCK_ELEMENTS` (entry, class) values, in float64. A pair whose
loss rose takes half its step again (backtracking); a pair stops when its Newton decrement is below
:data:`TOLERANCE`·N.

Average precision ranks the samples by the probe's score, that is by sign(w)·x with the zeros tied
in one group, and is Σ over tie groups of (positives in the group / all positives) × precision at
the group's end, as scikit-learn's ``average_precision_score`` computes it; from the ranks of the
positive entries alone, in O(entries), never O(entries × classes).
"""

from dataclasses import dataclass

import numpy as np
import torch

RIDGE = 1e-6
TOLERANCE = 1e-12
MAX_ITER = 100
BLOCK_ELEMENTS = 2**20


@dataclass(frozen=True)
class Entries:
    """The nonzero values of n_features features over N samples, sorted by feature then value (descending).

    ``label_E`` is the class index (0 … C−1) of each entry's sample, −1 where it is of no class.
    ``positives_C``: samples of each class, all of them (the zeros' included).
    """

    feature_E: np.ndarray
    value_E: np.ndarray
    label_E: np.ndarray
    n_samples: int
    positives_C: np.ndarray

    @classmethod
    def build(cls, feature_E, value_E, label_E, n_samples: int, positives_C) -> "Entries":
        """Entries in any order, with zero values dropped, sorted as the fit needs them."""
        keep = value_E != 0
        feature_E, value_E, label_E = feature_E[keep], value_E[keep], label_E[keep]
        order = np.lexsort((-value_E, feature_E))
        return cls(feature_E[order].astype(np.int64), value_E[order].astype(np.float64),
                   label_E[order].astype(np.int64), int(n_samples), np.asarray(positives_C, dtype=np.int64))

    @property
    def n_classes(self) -> int:
        return len(self.positives_C)


@dataclass(frozen=True)
class ProbeFit:
    """Per live feature (``features_F``, ascending) and class: the probe's parameters, mean loss,
    ``probe_r`` = 1 − L / L₀ (L₀ the bias-only loss) and average precision; ``nnz_F`` nonzero samples."""

    features_F: np.ndarray
    nnz_F: np.ndarray
    w_FC: np.ndarray
    b_FC: np.ndarray
    loss_FC: np.ndarray
    probe_r_FC: np.ndarray
    ap_FC: np.ndarray
    passes: int


def _softplus(x):
    return torch.nn.functional.softplus(x)


def _segments(feature_E: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, start, stop) of each feature's run of entries."""
    features, start = np.unique(feature_E, return_index=True)
    return features, start, np.r_[start[1:], len(feature_E)]


def _concat_ranges(start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    lengths = stop - start
    return np.repeat(start - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + np.arange(lengths.sum())


class _Sums:
    """Per (live feature, class) sums over the nonzero entries at the current parameters."""

    def __init__(self, shape, device):
        z = lambda: torch.zeros(shape, dtype=torch.float64, device=device)  # noqa: E731
        self.mu, self.mu_x, self.s, self.s_x, self.s_xx, self.loss = z(), z(), z(), z(), z(), z()


def _pass(fit_rows: np.ndarray, row_of: np.ndarray, e: Entries, w, b, device) -> _Sums:
    """Sums over the entries ``fit_rows``, entry ``fit_rows[i]`` adding to row ``row_of[i]`` of w and b,
    in bounded blocks."""
    sums = _Sums(tuple(w.shape), device)
    block = max(1, BLOCK_ELEMENTS // e.n_classes)
    for lo in range(0, len(fit_rows), block):
        idx = fit_rows[lo:lo + block]
        f = torch.as_tensor(row_of[lo:lo + block], device=device)
        x = torch.as_tensor(e.value_E[idx], device=device)[:, None]
        lab = torch.as_tensor(e.label_E[idx], device=device)
        eta = b[f] + w[f] * x
        mu = torch.sigmoid(eta)
        s = mu * (1 - mu)
        loss = _softplus(eta)
        labelled = lab >= 0
        # y·η for each entry's own class only: the one term of its row that has y = 1.
        loss[labelled, lab[labelled]] -= eta[labelled, lab[labelled]]
        for total, part in ((sums.mu, mu), (sums.mu_x, mu * x), (sums.s, s), (sums.s_x, s * x),
                            (sums.s_xx, s * x * x), (sums.loss, loss)):
            total.index_add_(0, f, part)
    return sums


def fit_probes(e: Entries, device: str = "cpu", progress=None) -> ProbeFit:
    """Fit every (live feature, class) probe over ``e``; see the module docstring."""
    dev = torch.device(device)
    features, start, stop = _segments(e.feature_E)
    n_f, c = len(features), e.n_classes
    local_E = np.repeat(np.arange(n_f), stop - start)
    nnz = torch.as_tensor(stop - start, dtype=torch.float64, device=dev)[:, None]
    n0 = e.n_samples - nnz  # each feature's zeros
    pi = torch.as_tensor(e.positives_C, dtype=torch.float64, device=dev)[None, :]
    # Per (feature, class): positives among the nonzero entries and the sum of their values.
    labelled = e.label_E >= 0
    flat = torch.as_tensor(local_E[labelled] * c + e.label_E[labelled], device=dev)
    y_nz = torch.zeros(n_f * c, dtype=torch.float64, device=dev).index_add_(
        0, flat, torch.ones(len(flat), dtype=torch.float64, device=dev)).view(n_f, c)
    yx_nz = torch.zeros(n_f * c, dtype=torch.float64, device=dev).index_add_(
        0, flat, torch.as_tensor(e.value_E[labelled], device=dev)).view(n_f, c)
    prevalence = (pi / e.n_samples).clamp(1e-12, 1 - 1e-12)
    b = torch.log(prevalence / (1 - prevalence)).expand(n_f, c).clone()
    w = torch.zeros(n_f, c, dtype=torch.float64, device=dev)
    loss0 = (e.n_samples * (_softplus(b[:1]) - prevalence * b[:1])).expand(n_f, c)
    best_w, best_b, best_loss = w.clone(), b.clone(), torch.full((n_f, c), float("inf"), dtype=torch.float64, device=dev)
    active = torch.ones(n_f, c, dtype=torch.bool, device=dev)
    step_w, step_b = torch.zeros_like(w), torch.zeros_like(b)
    passes = 0
    while passes < MAX_ITER:
        rows_F = np.flatnonzero(active.any(1).cpu().numpy())
        if not len(rows_F):
            break
        passes += 1
        fit_rows = _concat_ranges(start[rows_F], stop[rows_F])
        row_of = np.repeat(np.arange(len(rows_F)), stop[rows_F] - start[rows_F])
        rf = torch.as_tensor(rows_F, device=dev)
        wr, br = w[rf], b[rf]
        sums = _pass(fit_rows, row_of, e, wr, br, dev)
        zeros, pos_nz = n0[rf], y_nz[rf]
        mu0 = torch.sigmoid(br)
        loss = sums.loss + zeros * _softplus(br) - (pi - pos_nz) * br + RIDGE / 2 * wr * wr
        g0 = sums.mu + zeros * mu0 - pi
        g1 = sums.mu_x - yx_nz[rf] + RIDGE * wr
        h00 = sums.s + zeros * mu0 * (1 - mu0)
        h01 = sums.s_x
        h11 = sums.s_xx + RIDGE
        det = (h00 * h11 - h01 * h01).clamp_min(1e-300)
        dw = (h00 * g1 - h01 * g0) / det
        db = (h11 * g0 - h01 * g1) / det
        act = active[rf]
        better = act & (loss <= best_loss[rf])
        worse = act & ~better
        # Accepted: remember the point and take the full Newton step from it.
        decrement = dw * g1 + db * g0
        best_w[rf] = torch.where(better, wr, best_w[rf])
        best_b[rf] = torch.where(better, br, best_b[rf])
        best_loss[rf] = torch.where(better, loss, best_loss[rf])
        new_step_w = torch.where(better, -dw, step_w[rf] / 2)
        new_step_b = torch.where(better, -db, step_b[rf] / 2)
        step_w[rf], step_b[rf] = new_step_w, new_step_b
        w[rf] = torch.where(act, best_w[rf] + new_step_w, wr)
        b[rf] = torch.where(act, best_b[rf] + new_step_b, br)
        done = better & (decrement.abs() < TOLERANCE * e.n_samples)
        stuck = worse & (new_step_w.abs() + new_step_b.abs() < 1e-12)
        active[rf] = act & ~done & ~stuck
        if progress is not None:
            progress(passes, int(active.sum()))
    # Pairs never re-evaluated after their last accepted step keep that step's starting point.
    w, b, loss = best_w, best_b, best_loss
    ap = average_precision(e, start, stop, w.cpu().numpy())
    loss_np, loss0_np = loss.cpu().numpy(), loss0.cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        probe_r = np.where(loss0_np > 0, 1 - loss_np / loss0_np, 0.0)
    return ProbeFit(features, stop - start, w.cpu().numpy(), b.cpu().numpy(), loss_np / e.n_samples, probe_r, ap,
                    passes)


def average_precision(e: Entries, start, stop, w_FC: np.ndarray) -> np.ndarray:
    """AP of every (live feature, class) probe, ranking by sign(w)·value (module docstring); feature i's
    entries are ``start[i]:stop[i]``."""
    ap_desc = _ap_one_order(e, start, stop, descending=True)
    ap_asc = _ap_one_order(e, start, stop, descending=False)
    ap = np.where(w_FC >= 0, ap_desc, ap_asc)
    prevalence = e.positives_C / e.n_samples
    return np.where(w_FC == 0, prevalence[None, :], ap)


def _ap_one_order(e: Entries, start, stop, descending: bool) -> np.ndarray:
    """AP per (feature, class) when samples rank by value descending (w > 0) or ascending (w < 0)."""
    n_f, c = len(start), e.n_classes
    local = np.repeat(np.arange(n_f), stop - start)
    pos_in = np.arange(len(e.value_E)) - np.repeat(start, stop - start)  # rank within the feature, descending
    length = np.repeat(stop - start, stop - start)
    value = e.value_E
    if not descending:
        pos_in = length - 1 - pos_in
        value = -value
    # Entries ranked before the zeros: positive values when descending, negative when ascending.
    before = value > 0
    n_before = np.bincount(local, weights=before, minlength=n_f).astype(np.int64)
    n0 = e.n_samples - (stop - start)
    # Tie groups: equal values within a feature; a group's end rank is its last member's rank + 1.
    order = np.lexsort((pos_in, local))
    v_sorted, l_sorted = value[order], local[order]
    new_group = np.r_[True, (v_sorted[1:] != v_sorted[:-1]) | (l_sorted[1:] != l_sorted[:-1])]
    group_sorted = np.cumsum(new_group) - 1
    group_end_rank = np.zeros(group_sorted[-1] + 1 if len(group_sorted) else 0, dtype=np.int64)
    np.maximum.at(group_end_rank, group_sorted, np.arange(len(order)) - np.repeat(start, stop - start) + 1)
    group_E = np.empty(len(order), dtype=np.int64)
    group_E[order] = group_sorted
    end_count = group_end_rank[group_E] + np.where(before, 0, n0[local])
    # Positives: per (feature, class, group), the count, and the running count in rank order.
    lab = e.label_E
    pos = np.flatnonzero(lab >= 0)
    f_p, c_p, g_p = local[pos], lab[pos], group_E[pos]
    keyorder = np.lexsort((g_p, c_p, f_p))
    f_p, c_p, g_p, pos = f_p[keyorder], c_p[keyorder], g_p[keyorder], pos[keyorder]
    first = np.r_[True, (f_p[1:] != f_p[:-1]) | (c_p[1:] != c_p[:-1]) | (g_p[1:] != g_p[:-1])]
    starts = np.flatnonzero(first)
    m = np.diff(np.r_[starts, len(pos)])
    uf, uc, up = f_p[starts], c_p[starts], pos[starts]
    pair = uf * c + uc
    new_pair = np.r_[True, pair[1:] != pair[:-1]]
    cum = np.cumsum(m)
    base = np.maximum.accumulate(np.where(new_pair, cum - m, 0))
    running = cum - base  # positives of (f, c) up to this group's end, among the nonzero entries
    is_before = before[up]
    pos_before = np.zeros(n_f * c)
    np.add.at(pos_before, pair[is_before], m[is_before])
    zero_pos = (e.positives_C[None, :] - _count_pairs(local, lab, n_f, c)).ravel()  # positives among the zeros
    running = running + np.where(is_before, 0, zero_pos[pair])
    total = np.zeros(n_f * c)
    np.add.at(total, pair, m * running / end_count[up])
    zero_end = (n_before[:, None] + n0[:, None]).repeat(c, 1).ravel()
    with np.errstate(invalid="ignore", divide="ignore"):
        total += np.where(n0.repeat(c) > 0, zero_pos * (pos_before + zero_pos) / np.maximum(zero_end, 1), 0)
        return (total / np.tile(e.positives_C, n_f)).reshape(n_f, c)


def _count_pairs(local, lab, n_f, c) -> np.ndarray:
    keep = lab >= 0
    return np.bincount(local[keep] * c + lab[keep], minlength=n_f * c).reshape(n_f, c)
