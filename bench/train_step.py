"""Tokens/s of one SAE training step: clipsae's sparse TopK step vs a plain dense PyTorch step.

Both steps do the same work: TopK forward, normalised MSE, backward, decoder-gradient
projection, clipping, Adam, renormalisation. The dense one multiplies the full (B, n) code
matrix by the decoder; ours touches only the k active latents per token in the decoder and in
the encoder's backward. With --peers-python, the peers' own steps (bench/peer_steps.py) run
in their venv within the same run, with no latent dead and with the same dead latents as ours. The encoder
matmul alone, measured in the same run, is the floor. Goals: none dead, ≥ 0.7× the matmul; 25% dead, ≥ 2×
sparsify's step and ≥ 0.5× the matmul. With --archs, other architectures' steps (defaults of
`clipsae train`) against the TopK step, measured in the same run.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_step_options  # noqa: E402
from clipsae.memory import keep_freed_memory  # noqa: E402
from clipsae.train import archs  # noqa: E402
from clipsae.train.dense import dense_forward  # noqa: E402
from clipsae.train.sae import TrainingSAE, optimise  # noqa: E402
from clipsae.train.spec import SAESpec  # noqa: E402


def rate(step, batch: int, steps: int) -> float:
    for _ in range(2):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - t)


def ours(spec: SAESpec, x: torch.Tensor, bf16: bool, dead_fraction: float = 0.0):
    sae = TrainingSAE(spec, 0, bf16_matmul=bf16).to(x.device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)  # as the trainer's
    dead = None
    if dead_fraction:
        # Dead latents spread over the dictionary, as in a real run: AuxK ranks and decodes them.
        dead = (torch.rand(spec.d_sae, generator=torch.Generator().manual_seed(1)) < dead_fraction).nonzero().squeeze(1)
        dead = dead.to(x.device)
    return lambda: optimise(sae, opt, x, dead, 1.0)


def dense(spec: SAESpec, x: torch.Tensor, bf16: bool):
    sae = TrainingSAE(spec, 0).to(x.device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            x_hat, _ = dense_forward(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, spec.k)
        loss = (x - x_hat.float()).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.project_decoder_grad()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        sae.normalize_decoder()

    return step


def encoder_matmul(spec: SAESpec, x: torch.Tensor, bf16: bool):
    """The encoder's (B, d) × (d, n) product alone: the floor every SAE step stands on."""
    W = torch.randn(spec.d_sae, spec.d, device=x.device)

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            x @ W.T

    return step


def peers(a, dead_fraction: float) -> dict:
    cmd = [a.peers_python, str(Path(__file__).with_name("peer_steps.py")), "--d", str(a.d), "--expansion",
           str(a.expansion), "--k", str(a.k), "--batch", str(a.batch), "--threads", str(a.threads), "--steps",
           str(a.steps), "--device", a.device, "--precision", a.precision, "--dead-fraction", str(dead_fraction)]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(ap)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="matmul precision of both steps")
    ap.add_argument("--peers-python", default=None, help="Python of a venv with eai-sparsify and sae-lens")
    ap.add_argument("--dead-fraction", type=float, default=0.25,
                    help="Share of latents dead for the AuxK lines (k_aux = d/2); 0 skips them")
    ap.add_argument("--archs", default="", help="comma list of other architectures to time against the TopK step")
    a = ap.parse_args()
    # As `clipsae train` runs; the reference and the peers' process (bench/peer_steps.py) get the same allocator.
    kept = keep_freed_memory()
    torch.set_num_threads(a.threads)
    spec = SAESpec("topk", a.d, a.expansion, k=a.k)
    x = torch.randn(a.batch, a.d, generator=torch.Generator().manual_seed(0)).to(a.device)
    print(f"d={a.d} n={spec.d_sae} k={a.k} batch={a.batch} threads={a.threads} device={a.device} "
          f"precision={a.precision} freed memory kept for reuse={kept}")
    bf16 = a.precision == "bf16"
    r_mm = rate(encoder_matmul(spec, x, bf16), a.batch, a.steps)
    r_dense = rate(dense(spec, x, bf16), a.batch, a.steps)
    print(f"encoder matmul alone     {r_mm:10,.0f} tokens/s   (measured again at the end)")
    print(f"dense PyTorch TopK step  {r_dense:10,.0f} tokens/s   ratio vs the matmul {r_dense / r_mm:.2f}")
    settings = [("none dead", 0.0)] + ([(f"{a.dead_fraction:.0%} dead, AuxK k_aux={spec.aux_k}", a.dead_fraction)]
                                        if a.dead_fraction else [])
    ratios = []
    for label, fraction in settings:
        r_ours = rate(ours(spec, x, bf16, fraction), a.batch, a.steps)
        ratios.append((label, r_ours))
        print(f"clipsae step, {label}: {r_ours:10,.0f} tokens/s   vs the matmul {r_ours / r_mm:.2f}, "
              f"vs dense {r_ours / r_dense:.2f}")
        if a.peers_python:
            for name, r in peers(a, fraction).items():
                if name.endswith("_auxk_reaches_encoder"):
                    if r is not None:
                        print(f"  {name.removesuffix('_auxk_reaches_encoder')}'s AuxK gives the encoder a gradient: {r}")
                elif isinstance(r, float):
                    print(f"  {name + ' step':22} {r:10,.0f} tokens/s   clipsae / {name} {r_ours / r:.2f}")
                else:
                    print(f"  {name}: {r}")
    for name in filter(None, a.archs.split(",")):
        other = archs.get(name).spec(a.d, a.expansion, a.k, 5.0, l0_coefficient=1.0, bandwidth=0.05)
        r_other = rate(ours(other, x, bf16), a.batch, a.steps)
        print(f"{name} step (its defaults): {r_other:10,.0f} tokens/s   vs the TopK step (none dead) "
              f"{r_other / ratios[0][1]:.2f}, vs the matmul {r_other / r_mm:.2f}")
    # A shared machine's speed drifts: the reference measured again, and the faster of the two taken, so
    # that a slow moment at the start does not flatter the ratios above.
    r_mm_end = rate(encoder_matmul(spec, x, bf16), a.batch, a.steps)
    best = max(r_mm, r_mm_end)
    print(f"encoder matmul alone, again {r_mm_end:10,.0f} tokens/s; against the faster of the two ({best:,.0f}):")
    for label, r in ratios:
        print(f"  clipsae step, {label}: {r / best:.2f} of the matmul")


if __name__ == "__main__":
    main()
