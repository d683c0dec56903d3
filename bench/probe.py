"""Time and peak memory of `clipsae analyze probe`: 40 attributes × 16,384 features × 200,000 images.

A TopK SAE with random weights encodes one store of 200,000 images (one token each); 30 binary and
10 numeric attributes (random, with repeated values) go in as a CSV. `analyze probe` runs as its own
process, so its peak RSS is its own. References, measured in the same run: a process that imports
the same modules and only reads every per-image value once; and scipy's Mann–Whitney U on the dense vectors, timed on a sample of
(feature, attribute) pairs and scaled to every pair, the plain way to get the same AUROCs.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import read_pass_process, run_clipsae, scratch  # noqa: E402
from bench.search import make_codes  # noqa: E402
from clipsae.store.codes import Codes  # noqa: E402
from clipsae.store.reader import ActivationStore  # noqa: E402

SAMPLE = 20  # (feature, attribute) pairs timed with scipy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=200_000)
    p.add_argument("--features", type=int, default=16_384)
    p.add_argument("--binary", type=int, default=30)
    p.add_argument("--numeric", type=int, default=10)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d", type=int, default=64)
    a = p.parse_args()
    rng = np.random.default_rng(1)
    with scratch("clipsae-bench-probe-") as tmp:
        store = make_codes(tmp, a.images, a.d, a.features, a.k, per_part=50_000)
        codes = Codes(ActivationStore.open(store), "sae")
        binary = rng.random((a.images, a.binary)) < rng.uniform(0.05, 0.5, a.binary)
        numeric = rng.integers(0, 100, (a.images, a.numeric))
        csv = tmp / "attrs.csv"
        with open(csv, "w") as fh:
            fh.write("key," + ",".join([f"b{i}" for i in range(a.binary)] + [f"n{i}" for i in range(a.numeric)]) + "\n")
            for i, (b, n) in enumerate(zip(binary.astype(int), numeric)):
                fh.write(f"{i:08d}," + ",".join(map(str, b)) + "," + ",".join(map(str, n)) + "\n")
        read_s, _ = read_pass_process(store, "sae")
        dense_cols = {}
        wanted = rng.choice(a.features, SAMPLE, replace=False)
        entries = 0
        for b in codes.iter_images("max"):
            entries += len(b.latents_E)
            for f in wanted:
                m = b.latents_E == f
                dense_cols.setdefault(int(f), np.zeros(a.images))[b.image_of_E[m]] = b.values_E[m]
        t = time.perf_counter()
        for j, f in enumerate(wanted):
            y = binary[:, j % a.binary]
            stats.mannwhitneyu(dense_cols[int(f)][y], dense_cols[int(f)][~y])
        scipy_s = (time.perf_counter() - t) / SAMPLE * a.features * a.binary
        probe_s, probe_mib, stdout = run_clipsae(["analyze", "probe", "--store", str(store), "--codes", "sae",
                                                  "--attributes", str(csv), "--out", str(tmp / "o")])
        print(stdout.splitlines()[1])
        print(f"{a.images:,} images, {a.features:,} latents (TopK-{a.k}, {entries:,} per-image values), "
              f"{a.binary} binary + {a.numeric} numeric attributes")
        print(f"analyze probe: {probe_s:.1f} s, peak RSS {probe_mib / 1024:.2f} GiB")
        print(f"reference, same run: a process reading the per-image values once {read_s:.1f} s; "
              f"ratio {probe_s / read_s:.1f}")
        print(f"reference, same run: scipy's Mann-Whitney U per (feature, binary attribute), {SAMPLE} timed and scaled "
              f"to {a.features * a.binary:,} pairs, {scipy_s:.0f} s; ratio {probe_s / scipy_s:.4f}")


if __name__ == "__main__":
    main()
