"""Inference's TopK selection in two passes (``train/topk.py``) against ``torch.topk``, in one process.

For each width: the selection alone on (rows, n) float32, then a whole ``encode_sparse`` (the encoder
matmul, the selection, the codes) with each selection, alternating rounds so that the machine's
drift falls on both alike. Prints medians and the ratio (torch.topk's time over the two passes').
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipsae.device import resolve_device  # noqa: E402
from clipsae.train import model  # noqa: E402
from clipsae.train.codes import SparseCodes  # noqa: E402
from clipsae.train.topk import topk_sorted  # noqa: E402


def torch_topk_codes(sae: model.SparseAutoencoder, z_BN: torch.Tensor) -> SparseCodes:
    """The reference: TopK codes as ``torch.topk`` (sorted) selects them, made into codes as clipsae's are."""
    return model.positive_codes(*z_BN.topk(sae.k, dim=1))


def seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--latents", default="6144,12288,65536", help="Comma-separated widths n.")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--rows", type=int, default=8192, help="Rows per call (encode's default batch).")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--device", default="auto")
    a = p.parse_args()
    dev = resolve_device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.rows, a.d, generator=g).to(dev)
    reference = model.Activation(torch_topk_codes, needs_k=True)
    print(f"device {dev}, {torch.get_num_threads()} CPU threads, float32, {a.rows} rows, k={a.k}, d={a.d}; medians of "
          f"{a.rounds} alternating rounds")
    for n in map(int, a.latents.split(",")):
        W = (torch.randn(n, a.d, generator=g) / a.d ** 0.5).to(dev)
        sae = model.SparseAutoencoder("topk", W, torch.zeros(n, device=dev), W.clone(), torch.zeros(a.d, device=dev),
                                      k=a.k)
        z = torch.randn(a.rows, n, generator=g).to(dev)
        two_pass = sae._activation
        times = {"torch.topk": [], "two passes": [], "encode, torch.topk": [], "encode, two passes": []}
        with torch.no_grad():
            for _ in range(a.rounds + 1):  # the first round warms up and is dropped
                times["torch.topk"].append(seconds(lambda: z.topk(a.k, dim=1), dev))
                times["two passes"].append(seconds(lambda: topk_sorted(z, a.k), dev))
                sae._activation = reference
                times["encode, torch.topk"].append(seconds(lambda: sae.encode_sparse(x), dev))
                sae._activation = two_pass
                times["encode, two passes"].append(seconds(lambda: sae.encode_sparse(x), dev))
        med = {k: statistics.median(v[1:]) * 1e3 for k, v in times.items()}
        print(f"n {n:>6}: selection {med['torch.topk']:7.1f} ms -> {med['two passes']:7.1f} ms "
              f"({med['torch.topk'] / med['two passes']:.2f}x); encode_sparse {med['encode, torch.topk']:7.1f} ms -> "
              f"{med['encode, two passes']:7.1f} ms ({med['encode, torch.topk'] / med['encode, two passes']:.2f}x)")


if __name__ == "__main__":
    main()
