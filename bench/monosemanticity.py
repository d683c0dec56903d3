"""Time and peak memory of `clipsae analyze monosemanticity` at 65,536 features over 50,000 images.

A TopK SAE with random weights encodes one store that also holds a 768-wide `embed` hook (ViT-L-14's
embedding width); `analyze monosemanticity` runs as its own process, so its peak RSS is its own. Two
references are measured in the same run: `analyze top-images` on the same codes (one pass over the
per-image values, no embeddings: the floor of any streaming method), and the definition's pairwise
double sum, timed on a sample of features and scaled to all of them by their Σ n_f² image pairs.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import run_clipsae, scratch  # noqa: E402
from clipsae.analysis.encode import EncodeConfig, run_encode  # noqa: E402
from clipsae.store.codes import Codes  # noqa: E402
from clipsae.store.reader import ActivationStore  # noqa: E402
from clipsae.store.writer import write_store  # noqa: E402
from tests.analysis.helpers import sae_weights, saelens_dir  # noqa: E402

SAMPLE = 256  # features whose pairwise sums are timed for the reference


def make_codes(tmp: Path, images: int, tokens: int, d: int, embed_d: int, features: int, k: int) -> Path:
    rng = np.random.default_rng(0)
    store = tmp / "s.zarr"
    per = 10_000
    for i in range(0, images, per):
        n = min(per, images - i)
        write_store(store, {"h": rng.standard_normal((n, tokens, d), dtype=np.float32),
                            "embed": rng.standard_normal((n, embed_d), dtype=np.float32).astype(np.float16)},
                    [f"{i + j:07d}" for j in range(n)], attrs={"model": "bench"}, part=f"p{i:07d}",
                    layouts={"h": {"cls_token": True, "grid": None}, "embed": {}})
    sae = saelens_dir(tmp / "sae", {"architecture": "topk", "k": k}, sae_weights(0, d=d, n=features))
    run_encode(EncodeConfig(store, sae, batch_size=2048, progress=False))
    return store


def pairwise_seconds(codes: Codes, embed: str) -> tuple[float, int]:
    """(seconds of the definition's double sum over all features, estimated; total image pairs)."""
    firing: dict[int, list] = {}
    counts = np.zeros(codes.d_sae, np.int64)
    rng = np.random.default_rng(0)
    sample = set(rng.choice(codes.d_sae, SAMPLE, replace=False).tolist())
    for b in codes.iter_images("max"):
        counts += np.bincount(b.latents_E, minlength=codes.d_sae)
        for img, f, v in zip(b.image_of_E, b.latents_E, b.values_E):
            if f in sample:
                firing.setdefault(int(f), []).append((int(img), float(v)))
    e = torch.nn.functional.normalize(torch.from_numpy(codes.store.read(embed, slice(None))[:, 0]).double(), dim=1)
    t = time.perf_counter()
    sampled_pairs = 0
    for f, hits in firing.items():
        imgs = torch.tensor([i for i, _ in hits])
        a = torch.tensor([v for _, v in hits], dtype=torch.float64)
        a = a / a.max()
        cos = e[imgs] @ e[imgs].T
        w = torch.outer(a, a).triu(1)
        (w * cos).sum() / w.sum()
        sampled_pairs += len(hits) ** 2
    seconds = time.perf_counter() - t
    total_pairs = int((counts.astype(np.float64) ** 2).sum())
    return seconds * total_pairs / max(sampled_pairs, 1), total_pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--features", type=int, default=65_536)
    p.add_argument("--tokens", type=int, default=1, help="Tokens per image; each image's value is its max over them.")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d", type=int, default=64, help="Width of the encoded hook.")
    p.add_argument("--embed-d", type=int, default=768, help="Width of the embedding hook.")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    with scratch("clipsae-bench-ms-") as tmp:
        store = make_codes(tmp, a.images, a.tokens, a.d, a.embed_d, a.features, a.k)
        codes = Codes(ActivationStore.open(store), "sae")
        entries = sum(len(b.latents_E) for b in codes.iter_images("max"))
        ms_s, ms_mib, stdout = run_clipsae(["analyze", "monosemanticity", "--store", str(store), "--codes", "sae",
                                            "--out", str(tmp / "o"), "--device", a.device])
        top_s, top_mib, _ = run_clipsae(["analyze", "top-images", "--store", str(store), "--codes", "sae",
                                         "--out", str(tmp / "o")])
        pair_s, pairs = pairwise_seconds(codes, "embed")
        print(stdout.splitlines()[0])
        print(f"{a.features:,} features, {a.images:,} images, {a.embed_d}-wide embeddings; {entries:,} per-image "
              f"values (max over {a.tokens} token(s) of a TopK-{a.k} code), {pairs:,} image pairs over all features")
        print(f"analyze monosemanticity: {ms_s:.1f} s, peak RSS {ms_mib / 1024:.2f} GiB")
        print(f"reference, same run: analyze top-images (one pass, no embeddings) {top_s:.1f} s, peak RSS "
              f"{top_mib / 1024:.2f} GiB; ratio {ms_s / top_s:.2f}")
        print(f"reference, same run: the pairwise double sum, {SAMPLE} features timed and scaled by Σ n_f², "
              f"{pair_s:.1f} s; ratio {ms_s / pair_s:.3f}")


if __name__ == "__main__":
    main()
