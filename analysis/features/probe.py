"""Each feature as a one-feature probe of each attribute (saev's per-latent probes, MSAE's attribute search).

For attribute a, over the images whose value of a is known, with v the feature's per-image value
(0 where it is silent):
- binary a: AUROC = U / (n⁺·n⁻), U the Mann–Whitney count Σ_{p∈pos, q∈neg} ([v_p > v_q] + ½[v_p = v_q]);
  the best F1 of the rule "positive iff v ≥ θ" over every θ the data offers (θ = 0 calls every image
  positive), F1 = 2TP / (2TP + FP + FN), ties going to the larger θ;
- numeric a: Pearson's r of v and a, and Spearman's ρ (Pearson's r of their mid-ranks).
Exact: the features are taken in groups whose firings fit ``max_entries``; each group costs one pass
over the codes, and its firings are sorted once (memory: the group's firings plus features × attributes).
"""

from dataclasses import dataclass

import numpy as np

from clipsae.analysis.attributes import Attributes
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes

DEFAULT_MAX_ENTRIES = 2**26  # firings held at once (about 1.3 GB with their sort)


@dataclass(frozen=True)
class ProbeStats:
    """attribute × feature tables (nan where an attribute's kind does not have the statistic)."""

    auroc_AF: np.ndarray
    f1_AF: np.ndarray
    threshold_AF: np.ndarray
    pearson_AF: np.ndarray
    spearman_AF: np.ndarray
    positives_A: np.ndarray
    images_A: np.ndarray
    passes: int
    fired_F: np.ndarray  # images each feature fired on (0: dead, left out of the tables)


def feature_groups(fired_F: np.ndarray, max_entries: int) -> list[tuple[int, int]]:
    """Contiguous feature ranges whose firings add up to at most ``max_entries`` (at least one feature each)."""
    groups, lo, total = [], 0, 0
    for f, n in enumerate(fired_F.tolist()):
        if f > lo and total + n > max_entries:
            groups.append((lo, f))
            lo, total = f, 0
        total += n
    groups.append((lo, len(fired_F)))
    return groups


def _midranks(x: np.ndarray) -> np.ndarray:
    """Mid-ranks (1-based, ties share their mean rank)."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    start = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    count = np.diff(np.r_[start, len(xs)])
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(start + (count + 1) / 2, count)
    return ranks


def _segment_sum(x: np.ndarray, seg: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(seg, x, minlength=n)


def _group_stats(feat_E, val_E, img_E, n_features, attrs: Attributes, out: ProbeStats, lo: int) -> None:
    """Fill columns lo:lo+n_features of ``out`` from the group's firings (feature-local indices)."""
    # One sort by (feature, value) serves every attribute: each keeps its known images in that order.
    order = np.lexsort((val_E, feat_E))
    feat_E, val_E, img_E = feat_E[order], val_E[order].astype(np.float64), img_E[order]
    for a, name in enumerate(attrs.names):
        y_I = attrs.values_AI[a]
        known_I = ~np.isnan(y_I)
        sel = known_I[img_E]
        f, v, img = feat_E[sel], val_E[sel], img_E[sel]
        y = y_I[img]
        n = int(known_I.sum())
        # Runs of equal (feature, value): the tie groups.
        new = np.r_[True, (f[1:] != f[:-1]) | (v[1:] != v[:-1])] if len(f) else np.zeros(0, bool)
        run = np.cumsum(new) - 1
        n_runs = int(run[-1]) + 1 if len(run) else 0
        run_f, run_v = f[new], v[new]
        m_F = np.bincount(f, minlength=n_features)  # firings per feature among the known images
        n0_F = n - m_F
        cols = slice(lo, lo + n_features)
        # Each run's first run within its feature, and the firings of lower runs of that feature.
        first_R = np.searchsorted(run_f, run_f)
        if attrs.binary[a]:
            pos = y == 1.0
            n_pos = int((y_I[known_I] == 1.0).sum())
            n_neg = n - n_pos
            P_R = _segment_sum(pos.astype(float), run, n_runs)
            N_R = _segment_sum((~pos).astype(float), run, n_runs)
            fp_F, fn_F = np.bincount(run_f, P_R, n_features), np.bincount(run_f, N_R, n_features)
            cum_P, cum_N = np.cumsum(P_R) - P_R, np.cumsum(N_R) - N_R
            pos_below_R, neg_below_R = cum_P - cum_P[first_R], cum_N - cum_N[first_R]
            # The silent images tie at 0, below every firing.
            p0_F, q0_F = n_pos - fp_F, n_neg - fn_F
            u_F = 0.5 * p0_F * q0_F + np.bincount(run_f, P_R * (q0_F[run_f] + neg_below_R + 0.5 * N_R), n_features)
            out.auroc_AF[a, cols] = u_F / (n_pos * n_neg) if n_pos and n_neg else np.nan
            # "v ≥ θ" at each run's value: the run's and every higher run's firings are called positive.
            tp_R, fpos_R = fp_F[run_f] - pos_below_R, fn_F[run_f] - neg_below_R
            f1_R = 2 * tp_R / (tp_R + fpos_R + n_pos) if n_pos else np.zeros(n_runs)
            best_f1 = np.full(n_features, 2 * n_pos / (n_pos + n))  # θ = 0: every image called positive
            best_t = np.zeros(n_features)
            if n_runs:
                # Per feature (its runs are contiguous, values ascending): the best F1, at its last run.
                starts = np.flatnonzero(np.r_[True, run_f[1:] != run_f[:-1]])
                feats = run_f[starts]
                top_f1 = np.maximum.reduceat(f1_R, starts)
                at_top = np.where(f1_R == np.repeat(top_f1, np.diff(np.r_[starts, n_runs])), np.arange(n_runs), -1)
                runs = np.maximum.reduceat(at_top, starts)
                better = f1_R[runs] >= best_f1[feats]
                best_f1[feats[better]], best_t[feats[better]] = f1_R[runs[better]], run_v[runs[better]]
            out.f1_AF[a, cols], out.threshold_AF[a, cols] = best_f1, best_t
            out.positives_A[a] = n_pos
        else:
            sy, syy = y_I[known_I].sum(), (y_I[known_I] ** 2).sum()
            sv, svv, svy = (np.bincount(f, w, n_features) for w in (v, v * v, v * y))
            out.pearson_AF[a, cols] = _pearson(n, sv, svv, svy, sy, syy)
            ry_I = np.full(len(y_I), np.nan)
            ry_I[known_I] = _midranks(y_I[known_I])
            ry = ry_I[img]
            # The silent images share the lowest mid-rank; the firings rank above them within their feature.
            size_R = np.bincount(run, minlength=n_runs).astype(float)
            cum_S = np.cumsum(size_R) - size_R
            rank_R = n0_F[run_f] + cum_S - cum_S[first_R] + (size_R + 1) / 2
            rv = rank_R[run]
            zero_rank_F = (n0_F + 1) / 2
            sum_ry = n * (n + 1) / 2
            srv = zero_rank_F * n0_F + np.bincount(f, rv, n_features)
            srv2 = zero_rank_F**2 * n0_F + np.bincount(f, rv * rv, n_features)
            srvy = zero_rank_F * (sum_ry - np.bincount(f, ry, n_features)) + np.bincount(f, rv * ry, n_features)
            out.spearman_AF[a, cols] = _pearson(n, srv, srv2, srvy, sum_ry, (ry_I[known_I] ** 2).sum())
        out.images_A[a] = n


def _pearson(n, sx, sxx, sxy, sy, syy) -> np.ndarray:
    """Pearson's r from sums over n pairs; nan where either side does not vary."""
    cov = sxy - sx * sy / n
    vx, vy = sxx - sx * sx / n, syy - sy * sy / n
    denom = np.sqrt(np.maximum(vx, 0) * max(vy, 0))
    return np.divide(cov, denom, out=np.full(np.shape(cov), np.nan), where=denom > 0)


def probe(codes: Codes, attrs: Attributes, by: str = "max", max_entries: int = DEFAULT_MAX_ENTRIES) -> ProbeStats:
    """Every feature against every attribute (see the module's formulas)."""
    if max_entries < 1:
        raise ClipsaeError(f"--max-entries must be at least 1, not {max_entries}")
    n_a, n_f = len(attrs.names), codes.d_sae
    nan = lambda: np.full((n_a, n_f), np.nan)  # noqa: E731
    fired = np.asarray(codes.sums().latent_images_fired)
    out = ProbeStats(nan(), nan(), nan(), nan(), nan(), np.zeros(n_a, np.int64), np.zeros(n_a, np.int64), 0, fired)
    groups = feature_groups(fired, max_entries)
    for lo, hi in groups:
        feats, vals, imgs = [], [], []
        for block in codes.iter_images(by):
            mine = (block.latents_E >= lo) & (block.latents_E < hi)
            feats.append(block.latents_E[mine] - lo)
            vals.append(block.values_E[mine])
            imgs.append(block.image_of_E[mine])
        _group_stats(np.concatenate(feats), np.concatenate(vals), np.concatenate(imgs), hi - lo, attrs, out, lo)
    return ProbeStats(out.auroc_AF, out.f1_AF, out.threshold_AF, out.pearson_AF, out.spearman_AF, out.positives_A,
                      out.images_A, len(groups), fired)


PROBE_COLUMNS = ("attribute", "feature", "auroc", "f1", "threshold", "positives", "images", "pearson", "spearman")
TOP_COLUMNS = ("attribute", "direction", "rank", "feature", "auroc", "f1", "pearson", "spearman")


def _ranking(stats: ProbeStats, attrs: Attributes, a: int, live: np.ndarray) -> np.ndarray:
    """The live features by how well they predict attribute a, best first: AUROC, or Spearman's ρ."""
    score = stats.auroc_AF[a, live] if attrs.binary[a] else stats.spearman_AF[a, live]
    return live[np.lexsort((live, -np.nan_to_num(score, nan=-np.inf)))]


def run_probe(t, attrs: Attributes, by: str = "max", top: int = 10, max_entries: int = DEFAULT_MAX_ENTRIES) -> list[str]:
    """probe.csv (every attribute × live feature) and probe_top.csv (each attribute's best features both ways)."""
    from clipsae.analysis.output import PROBE_FILE, write_csv

    if top < 1:
        raise ClipsaeError(f"--top must be at least 1, not {top}")
    st = probe(t.codes, attrs, by, max_entries)
    live = np.nonzero(st.fired_F > 0)[0]

    def cells(a, f):
        return (attrs.names[a], int(f), st.auroc_AF[a, f], st.f1_AF[a, f], st.threshold_AF[a, f] if attrs.binary[a]
                else None, int(st.positives_A[a]) if attrs.binary[a] else None, int(st.images_A[a]),
                st.pearson_AF[a, f], st.spearman_AF[a, f])

    path = write_csv(t.out / PROBE_FILE, PROBE_COLUMNS, (cells(a, f) for a in range(len(attrs.names)) for f in live))
    top_rows, lines = [], attrs.summary()
    lines.append(f"{t.title}: {len(live)} live features × {len(attrs.names)} attributes by {by} "
                 f"({st.passes} pass{'es' if st.passes > 1 else ''} over the codes)")
    for a, name in enumerate(attrs.names):
        order = _ranking(st, attrs, a, live)
        for direction, feats in (("positive", order[:top]), ("negative", order[::-1][:top])):
            for r, f in enumerate(feats):
                c = cells(a, f)
                top_rows.append((name, direction, r + 1, int(f), c[2], c[3], c[7], c[8]))
        if len(order):
            f = order[0]
            what = (f"AUROC {st.auroc_AF[a, f]:.3f}, F1 {st.f1_AF[a, f]:.3f} ({st.positives_A[a]} of {st.images_A[a]} "
                    f"positive)" if attrs.binary[a] else f"Spearman {st.spearman_AF[a, f]:.3f}, Pearson "
                    f"{st.pearson_AF[a, f]:.3f} ({st.images_A[a]} images)")
            lines.append(f"{name}: best feature {f}, {what}")
    top_path = write_csv(t.out / "probe_top.csv", TOP_COLUMNS, top_rows)
    return lines + [f"wrote {path}, {top_path}"]
