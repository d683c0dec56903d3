"""Patch-level concept alignment (saev's probe1d): how well single features find segmented classes.

Samples are the encoded patch tokens whose patch label (store.md, "Patch labels") covers at least
``min_share`` of the patch; those labelled 0 (unlabelled) are negatives for every class. For each
(feature, class) a 1-D logistic probe of "the patch is this class" on the feature's value
(probe1d.py): its mean loss, ``probe_r`` = 1 − L / L₀ and average precision. Per class, the best
feature by AP (ties to the smaller feature); ``purity_16``: the share of that feature's 16
highest-valued patches that carry the class (fewer than 16 nonzero patches count the rest as
misses). Summary: ``map`` (the mean of the classes' best AP), ``purity_16`` (its mean) and
``coverage_0.3`` (the share of classes whose best AP ≥ 0.3).
"""

from dataclasses import dataclass

import numpy as np

from clipsae.analysis.evaluation.probe1d import Entries, ProbeFit, fit_probes
from clipsae.errors import ClipsaeError

DEFAULT_MIN_SHARE = 0.5
PURITY_TOP = 16
COVERAGE_AP = 0.3
SUMMARY_FILE = "patch_probe.json"  # at the default --min-share, which ``analyze compare`` reads
COLUMNS = ("feature", "class", "w", "b", "loss", "probe_r", "ap")
CLASS_COLUMNS = ("class", "patches", "best_feature", "ap", "purity_16")
SUMMARY_KEYS = ("map", "purity_16", "coverage_0.3")


@dataclass(frozen=True)
class PatchSamples:
    """The probe's samples gathered from codes: entries, the classes probed and their patch counts."""

    entries: Entries
    class_ids: np.ndarray  # mask class index of each probed class
    class_names: list[str]
    absent: list[str]  # mask classes with no labelled patch here


def gather(codes, min_share: float = DEFAULT_MIN_SHARE) -> PatchSamples:
    """The encoded patch tokens of ``codes`` whose label covers ≥ ``min_share`` of the patch, as entries."""
    if not 0 < min_share <= 1:
        raise ClipsaeError(f"--min-share must be in (0, 1], not {min_share}")
    store = codes.store
    lay = store.layout(codes.hook)
    labels_IP, share_IP = store.patch_labels(codes.hook)
    classes = {k: v for k, v in store.mask_classes().items() if k != 0}
    patch_of_T = codes.token_positions - lay.prefix  # negative: the CLS token or a register
    if not (patch_of_T >= 0).any():
        raise ClipsaeError(f"codes {codes.name!r} encode no patch token (only CLS or registers); encode with --tokens patches or all")
    kept_T = patch_of_T >= 0
    t = codes.n_positions
    features, values, labels, n_samples = [], [], [], 0
    label_index = np.full(max(classes, default=0) + 1, -1, dtype=np.int64)
    label_index[np.array(sorted(classes), dtype=np.int64)] = np.arange(len(classes))
    counts = np.zeros(len(classes), dtype=np.int64)
    for first, latents_RK, values_RK in codes.iter_token_blocks():
        n = len(latents_RK) // t
        lab_IT = labels_IP[first:first + n][:, np.maximum(patch_of_T, 0)].astype(np.int64)
        ok_IT = (share_IP[first:first + n][:, np.maximum(patch_of_T, 0)] >= np.float16(min_share)) & kept_T
        rows = np.flatnonzero(ok_IT.ravel())
        cls_R = label_index[lab_IT.ravel()[rows]]
        n_samples += len(rows)
        counts += np.bincount(cls_R[cls_R >= 0], minlength=len(classes))
        lat, val = latents_RK[rows], values_RK[rows]
        live = (lat >= 0) & (val != 0)
        features.append(lat[live])
        values.append(val[live])
        labels.append(np.broadcast_to(cls_R[:, None], lat.shape)[live])
    if n_samples == 0:
        raise ClipsaeError(f"no encoded patch of {store.path} has a label covering {min_share} of it; lower --min-share")
    probed = counts > 0
    probed &= counts < n_samples  # a class on every patch has nothing to tell apart
    remap = np.full(len(classes) + 1, -1, dtype=np.int64)
    remap[np.flatnonzero(probed)] = np.arange(int(probed.sum()))
    cat = lambda xs, dtype: np.concatenate(xs) if xs else np.empty(0, dtype)  # noqa: E731
    entries = Entries.build(cat(features, np.int64), cat(values, np.float32), remap[cat(labels, np.int64)],
                            n_samples, counts[probed])
    ids = np.array(sorted(classes), dtype=np.int64)
    return PatchSamples(entries, ids[probed], [classes[i] for i in ids[probed]],
                        [classes[i] for i in ids[~probed]])


@dataclass(frozen=True)
class ClassBest:
    """Per probed class: its best feature by AP, that AP and the feature's purity at 16."""

    feature_C: np.ndarray
    ap_C: np.ndarray
    purity_C: np.ndarray


def best_per_class(fit: ProbeFit, entries: Entries) -> ClassBest:
    """Each class's best feature by AP (ties to the smaller feature) and its purity at 16."""
    n_classes = entries.n_classes
    if not len(fit.features_F):
        nan = np.full(n_classes, np.nan)
        return ClassBest(np.full(n_classes, -1), nan, nan)
    best = np.argmax(fit.ap_FC, axis=0)  # the first maximum: features ascend, so the smaller one
    start = np.searchsorted(entries.feature_E, fit.features_F[best])
    purity = np.empty(n_classes)
    for c in range(n_classes):
        top = entries.label_E[start[c]:start[c] + min(PURITY_TOP, int(fit.nnz_F[best[c]]))]
        purity[c] = np.count_nonzero(top == c) / PURITY_TOP
    return ClassBest(fit.features_F[best], fit.ap_FC[best, np.arange(n_classes)], purity)


def summarize(best: ClassBest) -> dict:
    """``map``, ``purity_16`` and ``coverage_0.3`` over the probed classes."""
    if not len(best.ap_C):
        return {k: float("nan") for k in SUMMARY_KEYS}
    return {"map": float(np.mean(best.ap_C)), "purity_16": float(np.mean(best.purity_C)),
            "coverage_0.3": float(np.mean(best.ap_C >= COVERAGE_AP))}


def pair_rows(fit: ProbeFit, names: list[str], top: int | None):
    """patch_probe.csv's rows: every live feature with every class, or each class's ``top`` by AP."""
    n_f, n_c = fit.ap_FC.shape
    if top is None:
        keep = np.ones((n_f, n_c), dtype=bool)
    else:
        keep = np.zeros((n_f, n_c), dtype=bool)
        order = np.argsort(-fit.ap_FC, axis=0, kind="stable")[:top]
        keep[order, np.arange(n_c)[None, :]] = True
    for f, c in zip(*np.nonzero(keep)):
        yield (int(fit.features_F[f]), names[c], float(fit.w_FC[f, c]), float(fit.b_FC[f, c]),
               float(fit.loss_FC[f, c]), float(fit.probe_r_FC[f, c]), float(fit.ap_FC[f, c]))


def run_patch_probe(t, min_share: float = DEFAULT_MIN_SHARE, top: int | None = None, device: str = "cpu") -> list[str]:
    """patch_probe.csv, patch_probe_classes.csv and patch_probe.json for the codes of target ``t``."""
    from tqdm import tqdm

    from clipsae.analysis.output import by_setting, write_csv, write_json
    from clipsae.device import resolve_device

    def named(stem: str, suffix: str) -> str:  # another --min-share never overwrites the default's files
        return by_setting(stem, suffix, min_share=(min_share, DEFAULT_MIN_SHARE))

    if top is not None and top < 1:
        raise ClipsaeError(f"--top must be at least 1, not {top}")
    samples = gather(t.codes, min_share)
    e = samples.entries
    with tqdm(desc="patch-probe Newton passes", unit="pass", disable=not t.codes.progress, dynamic_ncols=True) as bar:
        def progress(_, active):
            bar.update(1)
            bar.set_postfix(pairs_left=active)

        fit = fit_probes(e, str(resolve_device(device)), progress)
    best = best_per_class(fit, e)
    summary = summarize(best)
    pairs = write_csv(t.out / named("patch_probe", ".csv"), COLUMNS, pair_rows(fit, samples.class_names, top))
    class_rows = [(name, int(e.positives_C[c]), int(best.feature_C[c]), float(best.ap_C[c]), float(best.purity_C[c]))
                  for c, name in enumerate(samples.class_names)]
    class_rows += [(name, 0, None, None, None) for name in samples.absent]
    per_class = write_csv(t.out / named("patch_probe_classes", ".csv"), CLASS_COLUMNS, class_rows)
    js = write_json(t.out / named("patch_probe", ".json"), {"codes": t.codes.name, **summary, "classes": len(samples.class_names),
                                           "absent_classes": samples.absent, "patches": e.n_samples,
                                           "min_share": min_share, "live_features": len(fit.features_F),
                                           "newton_passes": fit.passes})
    return [f"{t.title}: patch probes of {len(fit.features_F)} live features × {len(samples.class_names)} classes over "
            f"{e.n_samples} labelled patches: mAP {summary['map']:.4f}, purity@16 {summary['purity_16']:.4f}, "
            f"coverage@0.3 {summary['coverage_0.3']:.4f}",
            f"wrote {pairs}, {per_class}, {js}"]
