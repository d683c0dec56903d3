"""Tokens/s of the peers' own TopK training steps; runs in a venv of their own (see docs/benchmarks.md).

Prints one JSON object: {"sparsify": tokens/s, "sae_lens": tokens/s} for each peer that imports.
Each step is the peer's forward and loss, backward, its decoder-gradient handling, and Adam.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

# On a CPU, sparsify falls back to its eager embedding_bag decoder only when told to.
os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "" if torch.cuda.is_available() else "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_step_options  # noqa: E402


def _rate(step, batch: int, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def sparsify_step(d, n, k, x, bf16=False):
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device=x.device, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)

    def step():
        # sparsify's own trainer runs the forward under bf16 autocast on a GPU.
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = sae(x)
        opt.zero_grad(set_to_none=True)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.set_decoder_norm_to_unit_norm()

    return step


def sae_lens_step(d, n, k, x, bf16=False):
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, dtype="float32", device=str(x.device)))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    inp = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = sae.training_forward_pass(inp)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()

    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    add_step_options(ap)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, a.d, generator=torch.Generator().manual_seed(0)).to(a.device)
    rates = {}
    for name, make in (("sparsify", sparsify_step), ("sae_lens", sae_lens_step)):
        try:
            step = make(a.d, a.expansion * a.d, a.k, x, a.precision == "bf16")
        except ImportError as exc:
            rates[name] = f"not installed ({exc})"
            continue
        rates[name] = _rate(step, a.batch, 2, a.steps)
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
