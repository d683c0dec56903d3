"""Time and peak memory of `clipsae analyze sparse-probe` at 1,000 tasks × 16,384 features × 200,000 images.

A TopK SAE with random weights encodes a store of one pooled token per image (d 1,024) whose labels are
1,000 classes: 1,000 one-vs-rest tasks. `analyze sparse-probe` runs as its own process (k = 1, 2, 5, with
and without the dense ceiling), so its peak RSS is its own. The reference, measured in the same run, is
one process that reads every per-image value of the codes once: the floor of any method that streams them
(sparse probing reads them twice, then fits 3,000 or 4,000 logistic regressions).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import read_pass_process, run_clipsae, scratch  # noqa: E402
from bench.search import make_codes  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=1000, help="Tasks: one per class.")
    ap.add_argument("--features", type=int, default=16_384)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--k", type=int, default=32)
    a = ap.parse_args()
    with scratch("clipsae-bench-sparse-probe-") as tmp:
        store = make_codes(tmp, a.images, a.d, a.features, a.k, per_part=20_000, classes=a.classes)
        floor_s, floor_mb = read_pass_process(store, "sae")
        rows = [("one read of the codes (reference)", floor_s, floor_mb)]
        for dense in ("--no-dense", "--dense"):
            s, mb, _ = run_clipsae(["analyze", "sparse-probe", "--store", str(store), "--codes", "sae", "--out",
                                    str(tmp / "out"), "--quiet", dense])
            rows.append((f"sparse-probe {dense}", s, mb))
    print(f"sparse probing: {a.classes:,} tasks × {a.features:,} features × {a.images:,} images (d {a.d}, k {a.k}),"
          f" k = 1, 2, 5")
    for name, s, mb in rows:
        print(f"  {name:<36} {s:8.1f} s  {s / floor_s:6.1f}× the read  peak RSS {mb:,.0f} MiB")


if __name__ == "__main__":
    main()
