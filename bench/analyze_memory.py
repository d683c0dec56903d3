"""Peak memory of `clipsae analyze top-images` and `density` on two stores, the larger 10× the other.

The larger store holds about ten blocks of the per-image entries the analyses stream, so a pass
that kept the store's codes in memory would show it. Each command runs as its own process; its
peak RSS comes from the kernel (wait4, bench/common.py). Ratio: peak on the larger store / the smaller.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_clipsae, scratch  # noqa: E402
from clipsae.analysis.encode import EncodeConfig, run_encode  # noqa: E402
from clipsae.store.codes import Codes  # noqa: E402
from clipsae.store.reader import ActivationStore  # noqa: E402
from clipsae.store.writer import write_store  # noqa: E402
from tests.analysis.helpers import sae_weights, saelens_dir  # noqa: E402


def make_codes(path: Path, sae: Path, images: int, tokens: int, d: int) -> int:
    rng = np.random.default_rng(0)
    per = 1000
    for i in range(0, images, per):
        n = min(per, images - i)
        write_store(path, {"h": rng.standard_normal((n, tokens, d), dtype=np.float32).astype(np.float16)},
                    [f"{i + j:07d}" for j in range(n)], attrs={"model": "bench"}, part=f"p{i:07d}",
                    layouts={"h": {"cls_token": True, "grid": None}})
    run_encode(EncodeConfig(path, sae, progress=False))
    codes = Codes(ActivationStore.open(path), "sae")
    return sum(len(b.latents_E) for b in codes.iter_images("max"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=1000, help="Images in the smaller store (the larger has 10×).")
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--features", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    a = ap.parse_args()
    with scratch("clipsae-bench-analyze-") as tmp:
        sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": a.k}, sae_weights(0, d=a.d, n=a.features))
        results = {}
        for n in (a.images, 10 * a.images):
            store = tmp / f"s{n}.zarr"
            entries = make_codes(store, sae, n, a.tokens, a.d)
            for cmd in ("top-images", "density"):
                results[cmd, n] = run_clipsae(["analyze", cmd, "--store", str(store), "--codes", "sae",
                                               "--out", str(tmp / "o")])[:2]
            print(f"store of {n} images: {entries:,} per-image entries ({entries / 2**20:.1f} streaming blocks)")
        for cmd in ("top-images", "density"):
            (t1, m1), (t2, m2) = results[cmd, a.images], results[cmd, 10 * a.images]
            print(f"{cmd:11s} peak RSS {m1:.0f} MiB → {m2:.0f} MiB on 10× the images (ratio {m2 / m1:.2f}); "
                  f"{t1:.1f} s → {t2:.1f} s")


if __name__ == "__main__":
    main()
