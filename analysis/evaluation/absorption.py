"""Feature absorption and feature splitting (SAEBench's absorption metric, on a hierarchy of image classes).

A general feature is absorbed when, on some of its instances, the SAE's latents for it stay silent and
a more specific latent, whose decoder direction carries the general direction, fires instead (Chanin et
al.'s "A is for Absorption"; SAEBench's ``evals/absorption``, moved from first letters of tokens to
parents of image classes). For each parent of ``--hierarchy`` (JSON ``{parent: [child, …]}`` over the
store's class names or attribute tasks):

1. **Ground truth**: scikit-learn's logistic regression (C = 1, balanced classes) of "the image is one of
   the parent's children" on the hook's activations pooled per image as ``--by`` pools codes, in the
   SAE's input space, fitted on the training images (sparse-probe's split by key hash). Its F1 on the
   test images must reach :data:`MIN_PROBE_F1`, or the parent is left out (said).
2. **Main features and splitting**: features ranked by the mean per-image value over the parent's
   training positives minus over its negatives (largest first); the k-feature probe (the same
   regression on those k values) for k = 1 … :data:`MAX_K`; a feature is added while the test F1 rises
   by more than :data:`F1_JUMP`. ``split_count`` = features added after the first.
3. **Absorption**, on each test image of the parent that the ground-truth probe calls positive, with
   p̂ the probe's unit direction, a = x·p̂ the activations' projection and, per feature f with value
   z_f and decoder row d_f, c_f = cos(p̂, d_f) and its projection z_f·c_f:
   - absorbers: features outside the main ones with c_f ≥ :data:`ABSORBER_COS` and z_f·c_f > 0, the
     :data:`MAX_ABSORBERS` largest; T their summed projection, M the main features' summed projection;
   - fraction 0 if M ≥ a or T < :data:`PROJECTION_SHARE`·a; else 1 if M ≤ 0; else
     min(T, a − M) / (min(T, a − M) + M), clipped to [0, 1];
   - full absorption: every main feature silent (z < 1e-8), the top projecting feature's c ≥
     :data:`FULL_ABSORPTION_COS`, a ≥ 0, and that feature's projection ≥ :data:`PROJECTION_SHARE`·a.
   A parent's (or child's) ``absorption_rate`` is the mean fraction over those images, its
   ``full_absorption_rate`` the share fully absorbed.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from clipsae.analysis.evaluation.sparse_probe import (
    block_matrix,
    fit_logistic,
    in_test_split,
    pooled_activations,
    tasks_of,
)
from clipsae.errors import ClipsaeError
from clipsae.files import read_json

MIN_PROBE_F1 = 0.6
F1_JUMP = 0.03
MAX_K = 10
ABSORBER_COS = 0.1
FULL_ABSORPTION_COS = 0.025
PROJECTION_SHARE = 0.4
MAX_ABSORBERS = 3
SILENT = 1e-8
ALL_CHILDREN = "(all)"
COLUMNS = ("parent", "child", "images", "main_features", "split_count", "absorption_rate", "full_absorption_rate")
SUMMARY = ("absorption_rate", "full_absorption_rate", "split_count")  # absorption.json's means, compare's columns


def read_hierarchy(path: Path) -> dict[str, list[str]]:
    """``{parent: [child, …]}`` from a JSON file; one line where it is not that."""
    obj = read_json(path, "hierarchy file")
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, list) and v and all(isinstance(c, str) for c in v) for v in obj.values()):
        raise ClipsaeError(f"hierarchy file {path} must be a JSON object of parent name to a non-empty list of child names")
    return {str(k): list(v) for k, v in obj.items()}


def absorption_fraction(a: float, proj_F: np.ndarray, cos_F: np.ndarray, main: np.ndarray) -> float:
    """SAEBench's absorption fraction of one image (module docstring, step 3); ``proj_F`` = z·c per feature."""
    main_proj = float(proj_F[main].sum())
    candidates = np.ones(len(proj_F), dtype=bool)
    candidates[main] = False
    candidates &= (cos_F >= ABSORBER_COS) & (proj_F > 0)
    total = float(np.sort(proj_F[candidates])[::-1][:MAX_ABSORBERS].sum())
    if main_proj >= a or a == 0 or total / a < PROJECTION_SHARE:
        return 0.0
    if main_proj <= 0:
        return 1.0
    absorbed = min(total, a - main_proj)
    return float(np.clip(absorbed / (absorbed + main_proj), 0.0, 1.0))


def is_full_absorption(a: float, z_F: np.ndarray, proj_F: np.ndarray, cos_F: np.ndarray, main: np.ndarray) -> bool:
    """SAEBench's full absorption of one image: main features silent, one aligned feature carrying ≥ 40%."""
    if not (z_F[main] < SILENT).all() or a < 0:
        return False
    top = int(np.argmax(proj_F))
    return bool(cos_F[top] >= FULL_ABSORPTION_COS and a > 0 and proj_F[top] / a >= PROJECTION_SHARE)


def _f1(model, x, y) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, model.predict(x), zero_division=0.0))


@dataclass(frozen=True)
class ParentResult:
    """One parent: its probe's test F1, main features, and per image of its probe's true positives
    (test images) the child, absorption fraction and full absorption; ``skipped`` says why it was left out."""

    parent: str
    probe_f1: float
    main: list[int]
    children_I: list[str]
    fraction_I: np.ndarray
    full_I: np.ndarray
    skipped: str | None = None


def image_values(codes, by: str) -> sparse.csr_matrix:
    """(images, d_sae) per-image values of every feature, as ``--by`` makes them."""
    blocks = [block_matrix(b, codes.d_sae) for b in codes.iter_images(by)]
    return sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, codes.d_sae))


def absorption(codes, sae, hierarchy: dict[str, list[str]], class_names: dict[int, str], attributes=None,
               by: str = "max", progress: bool = False) -> list[ParentResult]:
    """Every parent's result (module docstring); ``sae`` is the model that made ``codes``."""
    import torch
    from tqdm import tqdm

    store = codes.store
    tasks = {t.name.removeprefix("class="): t for t in tasks_of(store.labels(), class_names, attributes)}
    names = set(tasks) | set(class_names.values())  # a class with no image here is known, and has no positives
    for parent, children in hierarchy.items():
        missing = [c for c in children if c not in names]
        if missing:
            known = ", ".join(sorted(names)[:6]) + (" …" if len(names) > 6 else "")
            raise ClipsaeError(f"hierarchy: {parent}'s child {missing[0]!r} is neither a class of the store nor an "
                               f"attribute task (it has {known or 'none'})")
    hierarchy = {parent: [c for c in children if c in tasks] for parent, children in hierarchy.items()}
    is_test = in_test_split(store.keys())
    known_any = np.zeros(codes.n_images, dtype=bool)
    for children in hierarchy.values():
        for c in children:
            known_any |= tasks[c].known_I
    images = np.flatnonzero(known_any)
    with torch.no_grad():
        pooled = torch.as_tensor(pooled_activations(store, codes.hook, codes.token_positions, images, by))
        x_ID = sae.normalize(pooled.to(sae.W_dec.dtype))[0].double().numpy()
        W_dec = sae.W_dec.detach().double().numpy()
    z_IF = image_values(codes, by)[images]
    dec_norm = np.linalg.norm(W_dec, axis=1)
    results = []
    for parent, children in tqdm(hierarchy.items(), desc="absorption", unit="parent", disable=not progress):
        if not children:
            results.append(ParentResult(parent, float("nan"), [], [], np.zeros(0), np.zeros(0, bool),
                                        "none of its children has an image here"))
            continue
        known = np.all([tasks[c].known_I[images] for c in children], axis=0)
        positive = np.any([tasks[c].positive_I[images] for c in children], axis=0)
        train, test = known & ~is_test[images], known & is_test[images]
        if min(np.count_nonzero(positive & train), np.count_nonzero(~positive & train),
               np.count_nonzero(positive & test), np.count_nonzero(~positive & test)) < 2:
            results.append(ParentResult(parent, float("nan"), [], [], np.zeros(0), np.zeros(0, bool),
                                        "fewer than 2 positive or negative images in a split"))
            continue
        probe = fit_logistic(x_ID[train], positive[train], "balanced")
        f1 = _f1(probe, x_ID[test], positive[test])
        if f1 < MIN_PROBE_F1:
            results.append(ParentResult(parent, f1, [], [], np.zeros(0), np.zeros(0, bool),
                                        f"its ground-truth probe's test F1 is {f1:.3f}, below {MIN_PROBE_F1}"))
            continue
        main = _main_features(z_IF, positive, train, test)
        direction = probe.coef_[0] / np.linalg.norm(probe.coef_[0])
        cos_F = (W_dec @ direction) / np.where(dec_norm > 0, dec_norm, 1.0)
        true_pos = np.flatnonzero(test & positive & (probe.decision_function(x_ID) > 0))
        child_of = {i: next(c for c in children if tasks[c].positive_I[images[i]]) for i in true_pos}
        fractions, full = np.zeros(len(true_pos)), np.zeros(len(true_pos), dtype=bool)
        for j, i in enumerate(true_pos):
            z_F = z_IF[i].toarray()[0]
            proj_F = z_F * cos_F
            a = float(x_ID[i] @ direction)
            fractions[j] = absorption_fraction(a, proj_F, cos_F, np.array(main))
            full[j] = is_full_absorption(a, z_F, proj_F, cos_F, np.array(main))
        results.append(ParentResult(parent, f1, main, [child_of[i] for i in true_pos], fractions, full))
    return results


def _main_features(z_IF: sparse.csr_matrix, positive, train, test) -> list[int]:
    """The features added while the k-feature probe's test F1 rises by more than :data:`F1_JUMP`."""
    pos, neg = positive & train, ~positive & train
    diff = np.asarray(z_IF[pos].mean(0)).ravel() - np.asarray(z_IF[neg].mean(0)).ravel()
    ranked = np.argsort(-diff, kind="stable")[:MAX_K]
    main, best = [], -np.inf
    for k in range(1, len(ranked) + 1):
        cols = ranked[:k]
        probe = fit_logistic(z_IF[train][:, cols].toarray(), positive[train], "balanced")
        score = _f1(probe, z_IF[test][:, cols].toarray(), positive[test])
        if score <= best + F1_JUMP:
            break
        best, main = score, [int(f) for f in cols]
    return main


def rows(results: list[ParentResult], hierarchy: dict[str, list[str]]) -> list[tuple]:
    """absorption.csv's rows: per parent, one row for all its children and one per child."""
    out = []
    for r in results:
        if r.skipped:
            out.append((r.parent, ALL_CHILDREN, 0, "", None, None, None))
            continue
        main = " ".join(map(str, r.main))
        split = len(r.main) - 1
        children_I = np.array(r.children_I, dtype=object)
        for child in (ALL_CHILDREN, *hierarchy[r.parent]):
            sel = np.ones(len(children_I), bool) if child == ALL_CHILDREN else children_I == child
            n = int(np.count_nonzero(sel))
            out.append((r.parent, child, n, main, split, float(r.fraction_I[sel].mean()) if n else None,
                        float(r.full_I[sel].mean()) if n else None))
    return out


def summary(results: list[ParentResult]) -> dict:
    """The means over the parents scored (SAEBench averages its letters the same way)."""
    kept = [r for r in results if not r.skipped and len(r.fraction_I)]
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"absorption_rate": mean([r.fraction_I.mean() for r in kept]),
            "full_absorption_rate": mean([r.full_I.mean() for r in kept]),
            "split_count": mean([len(r.main) - 1 for r in kept]),
            "parents": len(kept),
            "probe_f1": {r.parent: r.probe_f1 for r in results},
            "skipped": [f"{r.parent}: {r.skipped}" for r in results if r.skipped]
            + [f"{r.parent}: its probe called no test image positive" for r in results
               if not r.skipped and not len(r.fraction_I)]}


def run_absorption(t, hierarchy_path: Path, by: str = "max", classes=None, shards=None, attributes=None,
                   sae_path: Path | None = None) -> list[str]:
    """absorption.csv and absorption.json for the codes of target ``t``."""
    from clipsae.analysis.class_names import class_names
    from clipsae.analysis.codes_sae import codes_sae
    from clipsae.analysis.output import by_setting, write_csv, write_json

    hierarchy = read_hierarchy(hierarchy_path)
    sae = codes_sae(t.codes, sae_path)
    results = absorption(t.codes, sae, hierarchy, class_names(t.store, classes, shards), attributes, by,
                         t.codes.progress)
    path = write_csv(t.out / by_setting("absorption", ".csv", by), COLUMNS, rows(results, hierarchy))
    s = summary(results)
    js = write_json(t.out / by_setting("absorption", ".json", by), {"codes": t.codes.name, "by": by,
                                                                   "hierarchy": str(hierarchy_path), **s})
    lines = [f"{t.title}: absorption over {s['parents']} of {len(hierarchy)} parents by {by}: mean absorption rate "
             f"{s['absorption_rate']:.4f}, full absorption {s['full_absorption_rate']:.4f}, "
             f"feature splitting {s['split_count']:.2f} features"]
    if s["skipped"]:
        lines.append(f"{len(s['skipped'])} parent(s) left out: {s['skipped'][0]}" + (" …" if len(s["skipped"]) > 1 else ""))
    return lines + [f"wrote {path}, {js}"]
