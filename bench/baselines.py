"""Time and peak memory of fitting the baselines (`train --arch pca|kmeans|nmf|random`) at d_in 1,024 over
1M tokens, each beside a TopK SAE trained on the same store for the same steps in the same run.

Each fit runs as its own `clipsae train` process (one pass: 1M tokens in batches of 4,096), so its peak
RSS is its own; the ratio is its time over the TopK run's, measured in the same run of this script.
Evaluation is held to the end (`--eval-every` past the run) so that the figures are the fits'.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_clipsae, scratch  # noqa: E402
from clipsae.store.writer import write_store  # noqa: E402


def make_store(tmp: Path, tokens: int, d: int) -> Path:
    rng = np.random.default_rng(0)
    store = tmp / "s.zarr"
    per_image, per_part = 16, 4096
    images = tokens // per_image
    mix = rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d)
    for i in range(0, images, per_part):
        n = min(per_part, images - i)
        x = rng.standard_normal((n, per_image, d), dtype=np.float32) @ mix
        write_store(store, {"h": x.astype(np.float16)}, [f"{i + j:07d}" for j in range(n)], attrs={"model": "bench"},
                    part=f"p{i:07d}", layouts={"h": {"cls_token": False, "grid": [4, 4]}})
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--archs", default="topk,pca,kmeans,random,nmf")
    a = ap.parse_args()
    steps = a.tokens // a.batch
    rows = []
    with scratch("clipsae-bench-baselines-") as tmp:
        store = make_store(tmp, a.tokens, a.d)
        for arch in a.archs.split(","):
            expansion, k = ("1", "32") if arch in ("pca", "kmeans", "nmf") else ("16", "32")
            s, mb, _ = run_clipsae(["train", "--store", str(store), "--arch", arch, "--expansion", expansion, "--k", k,
                                    "--batch-size", str(a.batch), "--steps", str(steps), "--holdout", "0.01",
                                    "--eval-every", str(steps + 1), "--out", str(tmp / arch), "--quiet"])
            rows.append((arch, expansion, s, mb))
    ref = next(s for arch, _, s, _ in rows if arch == "topk")
    print(f"baselines: d_in {a.d}, {steps * a.batch:,} tokens in {steps} batches of {a.batch}")
    for arch, expansion, s, mb in rows:
        print(f"  {arch:<8} x{expansion:<3} {s:8.1f} s  {s / ref:5.2f}× the TopK run  peak RSS {mb:,.0f} MiB")


if __name__ == "__main__":
    main()
