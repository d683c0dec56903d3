"""Time and peak memory of `clipsae analyze correlate` at 16,384 × 16,384 features over 50,000 images.

Two TopK SAEs (random weights) encode one store; `analyze correlate` runs as its own process, so
its peak RSS is its own. For scale, the same run measures the two pieces any exact method pays:
the float32 products of dense (rows × features) blocks (four blocks timed, scaled to all rows)
and scipy's Hungarian assignment on a random matrix of the same size.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_clipsae, scratch  # noqa: E402
from clipsae.analysis.encode import EncodeConfig, run_encode  # noqa: E402
from clipsae.analysis.features.correlate import ROWS_PER_BLOCK  # noqa: E402
from clipsae.store.writer import write_store  # noqa: E402
from tests.analysis.helpers import sae_weights, saelens_dir  # noqa: E402


def make_codes(tmp: Path, images: int, tokens: int, d: int, features: int, k: int) -> Path:
    rng = np.random.default_rng(0)
    store = tmp / "s.zarr"
    per = 5000
    for i in range(0, images, per):
        n = min(per, images - i)
        write_store(store, {"h": rng.standard_normal((n, tokens, d), dtype=np.float32)},
                    [f"{i + j:07d}" for j in range(n)], attrs={"model": "bench"}, dtype="float32",
                    part=f"p{i:07d}", layouts={"h": {"cls_token": True, "grid": None}})
    for name, seed in (("a", 1), ("b", 2)):
        sae = saelens_dir(tmp / name, {"architecture": "topk", "k": k}, sae_weights(seed, d=d, n=features))
        run_encode(EncodeConfig(store, sae, progress=False))
    return store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--features", type=int, default=16_384)
    p.add_argument("--tokens", type=int, default=1, help="Tokens per image; each image's value is its max over them.")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    with scratch("clipsae-bench-correlate-") as tmp:
        store = make_codes(tmp, a.images, a.tokens, a.d, a.features, a.k)
        total, peak_mib, stdout = run_clipsae(["analyze", "correlate", "--a", f"{store}:a", "--b", f"{store}:b",
                                               "--out", str(tmp / "out"), "--device", a.device])
        nnz = sum(1 for _ in open(tmp / "out" / "best_matches.csv")) - 1
        torch.manual_seed(0)
        x = torch.rand(ROWS_PER_BLOCK, a.features)
        t = time.perf_counter()
        for _ in range(4):
            x.T @ x
        gemm = (time.perf_counter() - t) / 4 * a.images / ROWS_PER_BLOCK
        m = np.random.default_rng(0).random((a.features, a.features))
        t = time.perf_counter()
        linear_sum_assignment(m, maximize=True)
        hungarian = time.perf_counter() - t
        print(stdout.splitlines()[2])
        print(f"{a.features} × {a.features} features, {a.images} images, value = max over {a.tokens} token(s) of a "
              f"TopK-{a.k} code; {nnz} best-match rows")
        print(f"analyze correlate: {total:.1f} s, peak RSS {peak_mib / 1024:.2f} GiB")
        print(f"reference: dense float32 block products {gemm:.1f} s + Hungarian on a random matrix {hungarian:.1f} s "
              f"= {gemm + hungarian:.1f} s; correlate / reference = {total / (gemm + hungarian):.2f}")


if __name__ == "__main__":
    main()
