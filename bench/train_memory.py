"""Peak memory of one TopK training step at CLIP-Scope's width: d_in 1,024, 65,536 latents, B 4,096.

Each setting runs in a process of its own: it makes the SAE and its fused Adam, takes two steps (Adam's
state is made on the first), and reports the memory (resident on the CPU; torch's allocated memory on a GPU,
``--device cuda``) before the first step (weights), after the
first (weights, gradients and Adam's state) and the peak (those and the step's transient buffers), beside
the sizes they should have: weights 2·n·d + n + d floats, gradients as many, Adam's state twice as many,
and the step's largest buffers, the (B, n) pre-activations and, with dead latents, AuxK's (B, C) blocks.
The reference, in the same run, is the pre-activations' own size: the step's floor on any device.

    .venv/bin/python bench/train_memory.py [--d 1024] [--latents 65536] [--batch 4096] [--dead-fraction 0.25]
"""

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

MiB = 2**20


def _rss() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / MiB


def child(d: int, n: int, batch: int, k: int, dead_fraction: float, bf16: bool, device: str) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from clipsae.memory import keep_freed_memory
    from clipsae.train.sae import TrainingSAE, optimise
    from clipsae.train.spec import SAESpec

    keep_freed_memory()  # as `clipsae train` runs: what the step frees stays resident for the next one
    torch.set_num_threads(2)
    cuda = device.startswith("cuda")
    # On a GPU, the caching allocator's figures; on the CPU, the process's resident memory.
    used = (lambda: torch.cuda.memory_allocated() / MiB) if cuda else _rss
    x = torch.randn(batch, d, generator=torch.Generator().manual_seed(0)).to(device)
    base = used()
    sae = TrainingSAE(SAESpec("topk", d, n // d, k=k), 0, bf16_matmul=bf16).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    dead = (torch.rand(n, generator=torch.Generator().manual_seed(1)) < dead_fraction).nonzero().squeeze(1).to(device) \
        if dead_fraction else None
    weights = used() - base
    optimise(sae, opt, x, dead, 1.0)
    after_first = used() - base
    optimise(sae, opt, x, dead, 1.0)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / MiB - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"weights": weights, "after_first_step": after_first, "peak": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--latents", type=int, default=65536)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--dead-fraction", type=float, default=0.25)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fraction, bf16 = json.loads(a.child)
        print(json.dumps(child(a.d, a.latents, a.batch, a.k, fraction, bf16, a.device)))
        return
    d, n, B = a.d, a.latents, a.batch
    params = 2 * n * d + n + d
    expected = {"weights": params * 4 / MiB, "gradients": params * 4 / MiB, "adam": 2 * params * 4 / MiB,
                "pre-activations (B, n)": B * n * 4 / MiB}
    print(f"d_in {d}, {n:,} latents, B {B}, k {a.k}: weights {expected['weights']:,.0f} MiB, gradients "
          f"{expected['gradients']:,.0f} MiB, Adam's state {expected['adam']:,.0f} MiB, pre-activations (B, n) "
          f"{expected['pre-activations (B, n)']:,.0f} MiB (the reference)")
    for fraction in (0.0, a.dead_fraction):
        for bf16 in (False, True):
            out = subprocess.run([sys.executable, __file__, "--d", str(d), "--latents", str(n), "--batch", str(B),
                                  "--k", str(a.k), "--device", a.device, "--child", json.dumps([fraction, bf16])],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            transient = r["peak"] - r["after_first_step"]
            print(f"  {'bf16' if bf16 else 'fp32'} matmul, {fraction:.0%} dead: weights {r['weights']:,.0f} MiB, "
                  f"+ gradients and Adam {r['after_first_step'] - r['weights']:,.0f} MiB, peak {r['peak']:,.0f} MiB "
                  f"(the step's transient {transient:,.0f} MiB, {transient / expected['pre-activations (B, n)']:.1f}× "
                  f"the pre-activations)")


if __name__ == "__main__":
    main()
