"""Time and peak memory of patch-probe's exact 1-D probes at 16,384 features × 150 classes × 1M labelled patches.

The solver (analysis/evaluation/probe1d.py) runs on planted entries, as `analyze patch-probe` hands them
over after reading the codes: each patch has ``--l0`` active features (their frequencies Zipf-like, so
some features are dense), a class among ``--classes`` (a fifth are unlabelled: negatives for all), and
each feature prefers one class (it fires on that class's patches three times as often). The reference,
measured in the same run, is scikit-learn's unpenalised ``LogisticRegression`` fitting some (feature,
class) probes one at a time on the same data, dense: its time per probe × all pairs is what fitting them
that way would take. ``--passes N`` stops after N Newton passes, to measure one pass at sizes a CPU does
not finish (the figures then say so).

    .venv/bin/python bench/patch_probe.py [--patches 1000000] [--features 16384] [--classes 150] [--l0 16]
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipsae.analysis.evaluation import probe1d  # noqa: E402
from clipsae.analysis.evaluation.probe1d import Entries, fit_probes  # noqa: E402


def planted(patches: int, features: int, classes: int, l0: int, seed: int = 0) -> Entries:
    rng = np.random.default_rng(seed)
    label_N = np.where(rng.random(patches) < 0.8, rng.integers(0, classes, patches), -1)
    weight_F = 1.0 / np.arange(1, features + 1) ** 0.8
    feature_E = rng.choice(features, size=patches * l0, p=weight_F / weight_F.sum())
    row_E = np.repeat(np.arange(patches), l0)
    # Each feature's preferred class: move two thirds of its entries that fall on other classes' patches
    # to a random patch of its class, so that it fires there three times as often.
    preferred_F = rng.integers(0, classes, features)
    by_class = [np.flatnonzero(label_N == c) for c in range(classes)]
    move = rng.random(len(feature_E)) < 2 / 3
    for c in range(classes):
        sel = np.flatnonzero(move & (preferred_F[feature_E] == c))
        row_E[sel] = by_class[c][rng.integers(0, len(by_class[c]), len(sel))]
    # A patch holds a feature once, as codes do: repeated draws are dropped.
    _, once = np.unique(row_E * features + feature_E, return_index=True)
    feature_E, row_E = feature_E[once], row_E[once]
    value_E = rng.gamma(2.0, 1.0, len(feature_E)).astype(np.float32)
    return Entries.build(feature_E, value_E, label_N[row_E], patches, np.bincount(label_N[label_N >= 0], minlength=classes))


def sklearn_seconds_per_probe(e: Entries, pairs: int) -> float:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    features = np.unique(e.feature_E)
    total = 0.0
    for f in rng.choice(features, pairs, replace=False):
        c = int(rng.integers(0, e.n_classes))
        sel = np.flatnonzero(e.feature_E == f)
        x = np.zeros(e.n_samples)
        y = np.zeros(e.n_samples, dtype=bool)
        # Dense: the N − n zeros are rows too. The labels of the zero rows are drawn to give the class its count.
        x[:len(sel)] = e.value_E[sel]
        y[:len(sel)] = e.label_E[sel] == c
        rest = e.positives_C[c] - int(y[:len(sel)].sum())
        y[len(sel):len(sel) + max(rest, 0)] = True
        t0 = time.perf_counter()
        LogisticRegression(C=np.inf, max_iter=1000).fit(x[:, None], y)
        total += time.perf_counter() - t0
    return total / pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patches", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=16_384)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--l0", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--passes", type=int, default=None, help="Stop after this many Newton passes.")
    ap.add_argument("--sklearn-pairs", type=int, default=6)
    a = ap.parse_args()
    if a.passes:
        probe1d.MAX_ITER = a.passes
    t0 = time.perf_counter()
    e = planted(a.patches, a.features, a.classes, a.l0)
    print(f"planted {len(e.feature_E):,} nonzero values ({a.patches:,} patches × L0 {a.l0}) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    times = []
    t0 = time.perf_counter()
    fit = fit_probes(e, a.device, lambda i, left: (times.append(time.perf_counter()),
                                                    print(f"  pass {i}: {left:,} pairs left, {times[-1] - t0:.1f} s", flush=True)))
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pairs = fit.ap_FC.size
    ref = sklearn_seconds_per_probe(e, a.sklearn_pairs)
    first = times[0] - t0 if times else float("nan")
    print(f"patch-probe: {len(fit.features_F):,} live features × {a.classes} classes = {pairs:,} probes over "
          f"{a.patches:,} patches (L0 {a.l0}) on {a.device}: {seconds:.1f} s for {fit.passes} Newton passes"
          f"{' (stopped by --passes)' if a.passes and fit.passes == a.passes else ' (converged)'}, "
          f"first pass {first:.1f} s; peak RSS {peak:,.0f} MiB")
    print(f"  reference: scikit-learn's LogisticRegression, one probe at a time on the dense values: "
          f"{ref * 1000:.0f} ms a probe, {ref * pairs / 3600:,.1f} h for all; this solver: "
          f"{seconds / pairs * 1e6:.1f} µs a probe, {ref * pairs / seconds:,.0f}× faster")


if __name__ == "__main__":
    main()
