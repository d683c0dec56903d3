"""Time and peak memory of `clipsae analyze report` at 16,384 features over 50,000 images.

Synthetic labelled JPEGs are written as webdataset tars; a store of random activations with CLS
plus a 7×7 patch grid (ViT-B-32's layout) is made from them, one part per tar, and a TopK SAE with
random weights encodes it. `analyze report` then runs as its own process. The reference, measured
in the same run: `analyze top-images` (one streaming pass over the codes) plus a plain loop that
decodes, resizes and saves as JPEG as many images as the report shows.
"""

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_clipsae, scratch  # noqa: E402
from clipsae.analysis.encode import EncodeConfig, run_encode  # noqa: E402
from clipsae.pipeline.synthetic import make_synthetic_shards  # noqa: E402
from clipsae.pipeline.tario import TarReport, iter_samples  # noqa: E402
from clipsae.store.writer import write_store  # noqa: E402
from tests.analysis.helpers import sae_weights, saelens_dir  # noqa: E402

GRID = (7, 7)


def make_codes(tmp: Path, images: int, d: int, features: int, k: int, per_tar: int) -> tuple[Path, list[Path]]:
    tars = make_synthetic_shards(tmp / "tars", images, per_tar, size=128)
    rng = np.random.default_rng(0)
    store = tmp / "s.zarr"
    tokens = 1 + GRID[0] * GRID[1]
    for i, tar in enumerate(tars):
        samples = list(iter_samples(str(tar), None, TarReport()))
        acts = rng.standard_normal((len(samples), tokens, d), dtype=np.float32)
        write_store(store, {"h": acts}, [s[0] for s in samples], labels=[s[2] for s in samples],
                    attrs={"model": "bench"}, dtype="float32", part=f"p{i:05d}", source=str(tar),
                    layouts={"h": {"cls_token": True, "grid": list(GRID)}})
    sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": k}, sae_weights(1, d=d, n=features))
    run_encode(EncodeConfig(store, sae, progress=False))
    return store, tars


def plain_thumbnails(tars: list[Path], n: int, out: Path) -> float:
    """Seconds to decode, resize and save the first ``n`` images of the tars, one after another."""
    out.mkdir()
    t, done = time.perf_counter(), 0
    for tar in tars:
        for key, data, _ in iter_samples(str(tar), None, TarReport()):
            with Image.open(io.BytesIO(data)) as im:
                im = im.convert("RGB")
                im.thumbnail((160, 160))
                im.save(out / f"{key}.jpg", "JPEG", quality=85)
            done += 1
            if done == n:
                return time.perf_counter() - t
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--features", type=int, default=16_384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--per-tar", type=int, default=5_000)
    a = p.parse_args()
    with scratch("clipsae-bench-report-") as tmp:
        t = time.perf_counter()
        store, tars = make_codes(tmp, a.images, a.d, a.features, a.k, a.per_tar)
        print(f"made {a.images} images in {len(tars)} tars, a store of CLS + {GRID[0]}×{GRID[1]} patches (d={a.d}) "
              f"and its TopK-{a.k} codes over {a.features} features in {time.perf_counter() - t:.0f} s")
        report, peak, stdout = run_clipsae(["analyze", "report", "--store", str(store), "--codes", "sae",
                                            "--out", str(tmp / "report"), "--quiet"])
        shown = len(list((tmp / "report" / "images").glob("*.jpg")))
        pages = len(list((tmp / "report" / "features").glob("*.html")))
        size = sum(f.stat().st_size for f in (tmp / "report").rglob("*") if f.is_file()) / 2**20
        top, _, _ = run_clipsae(["analyze", "top-images", "--store", str(store), "--codes", "sae", "-k", "12",
                                 "--out", str(tmp / "top")])
        thumbs = plain_thumbnails(tars, shown, tmp / "plain")
        print(stdout.strip().splitlines()[0])
        print(f"analyze report: {report:.1f} s, peak RSS {peak / 1024:.2f} GiB; {pages} feature pages, "
              f"{shown} thumbnails, {size:.0f} MiB on disk")
        print(f"reference: analyze top-images {top:.1f} s + plain thumbnails of {shown} images {thumbs:.1f} s "
              f"= {top + thumbs:.1f} s; report / reference = {report / (top + thumbs):.2f}")


if __name__ == "__main__":
    main()
