"""Time and peak memory of `clipsae analyze search` over 1,000,000 images × 16,384 latents of cached codes.

A TopK SAE with random weights encodes one store of 1M images (one token each); `analyze search`
runs as its own process for a weighted-features query and for a stored image's query (cosine over
the latents), so its peak RSS is its own. Reference, measured in the same run: a process that
imports the same modules and only reads every per-image value once, the floor of any exact
streaming search.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import read_pass_process, run_clipsae, scratch  # noqa: E402
from clipsae.analysis.encode import EncodeConfig, run_encode  # noqa: E402
from clipsae.store.codes import Codes  # noqa: E402
from clipsae.store.reader import ActivationStore  # noqa: E402
from clipsae.store.writer import write_store  # noqa: E402
from tests.analysis.helpers import sae_weights, saelens_dir  # noqa: E402


def make_codes(tmp: Path, images: int, d: int, features: int, k: int, per_part: int = 100_000,
               classes: int | None = None) -> Path:
    """A store of one pooled token per image (labels cycling over ``classes``, if given), encoded by a
    random TopK SAE as codes 'sae'."""
    rng = np.random.default_rng(0)
    store = tmp / "s.zarr"
    for i in range(0, images, per_part):
        n = min(per_part, images - i)
        write_store(store, {"h": rng.standard_normal((n, 1, d), dtype=np.float32).astype(np.float16)},
                    [f"{i + j:08d}" for j in range(n)], attrs={"model": "bench"}, part=f"p{i:08d}",
                    labels=None if classes is None else (np.arange(i, i + n) % classes).tolist(),
                    layouts={"h": {"cls_token": True, "grid": None}})
    sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": k}, sae_weights(0, d=d, n=features))
    run_encode(EncodeConfig(store, sae, batch_size=8192, progress=False))
    return store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--features", type=int, default=16_384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d", type=int, default=64)
    a = p.parse_args()
    with scratch("clipsae-bench-search-") as tmp:
        store = make_codes(tmp, a.images, a.d, a.features, a.k)
        codes = Codes(ActivationStore.open(store), "sae")
        entries = sum(len(b.latents_E) for b in codes.iter_images("max"))
        read_s, read_mib = read_pass_process(store, "sae")
        common = ["analyze", "search", "--store", str(store), "--codes", "sae", "-k", "100"]
        feat_s, feat_mib, _ = run_clipsae(common + ["--features", "1,2,3,4,5:2", "--out", str(tmp / "f")])
        key_s, key_mib, _ = run_clipsae(common + ["--key", "00000007", "--out", str(tmp / "k")])
        print(f"{a.images:,} images, {a.features:,} latents, TopK-{a.k}: {entries:,} per-image values")
        print(f"reference, same run: a process reading the per-image values once {read_s:.1f} s, peak RSS "
              f"{read_mib / 1024:.2f} GiB")
        print(f"search --features (5 features): {feat_s:.1f} s, peak RSS {feat_mib / 1024:.2f} GiB; "
              f"ratio to the read pass {feat_s / read_s:.2f}")
        print(f"search --key (cosine over the latents): {key_s:.1f} s, peak RSS {key_mib / 1024:.2f} GiB; "
              f"ratio to the read pass {key_s / read_s:.2f}")


if __name__ == "__main__":
    main()
