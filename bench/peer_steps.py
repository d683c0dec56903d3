"""Tokens/s of the peers' own TopK training steps; runs in a venv of their own (see docs/benchmarks.md).

Prints one JSON object: {"sparsify": tokens/s, "sae_lens": tokens/s} for each peer that imports, and for each
whether its AuxK gives the dead latents' encoder rows a gradient. Each step is what the peer's own trainer
does per step (its forward with the dead mask, loss, backward, decoder handling, clipping or not, Adam,
firing bookkeeping); ``--dead-fraction`` gives every step the same dead latents as clipsae's.
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
from clipsae.memory import keep_freed_memory  # noqa: E402 (imports nothing of clipsae's dependencies)


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


AUXK_ALPHA = 1 / 32  # clipsae's default; sparsify's own default is 0 (AuxK off), so it is set here


def dead_mask(n: int, fraction: float, device) -> torch.Tensor | None:
    """The dead latents every step of the benchmark gets, the same for clipsae and each peer
    (bench/train_step.py draws the same): a seeded draw spread over the dictionary."""
    if not fraction:
        return None
    return (torch.rand(n, generator=torch.Generator().manual_seed(1)) < fraction).to(device)


def sparsify_step(d, n, k, x, dead, bf16=False):
    """What sparsify's Trainer does per step (trainer.py, ``fit``), with AuxK on: the decoder put back on the
    unit sphere before the forward, the forward with the dead mask, fvu + auxk_alpha·auxk_loss, backward,
    the gradient parallel to the decoder directions removed, Adam (torch's, as without bitsandbytes), no
    clipping; then its firing bookkeeping. The dead mask stays the one given."""
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d, SparseCoderConfig(num_latents=n, k=k), device=x.device, dtype=torch.float32)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    since_fired = torch.zeros(n, dtype=torch.long, device=x.device)

    def step():
        sae.set_decoder_norm_to_unit_norm()
        # sparsify's own trainer runs the forward under bf16 autocast on a GPU.
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = sae(x, dead_mask=dead)
        loss = out.fvu + AUXK_ALPHA * out.auxk_loss
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            did_fire = torch.zeros(n, dtype=torch.bool, device=x.device)
            did_fire[out.latent_indices.flatten()] = True
            since_fired.add_(len(x))
            since_fired[did_fire] = 0

    return step, lambda: _auxk_reaches_encoder(sae, lambda: sae(x, dead_mask=dead).auxk_loss,
                                               lambda: sae.encoder.weight.grad, dead)


def sae_lens_step(d, n, k, x, dead, bf16=False):
    """What SAELens's SAETrainer does per step (``_train_step``): the TopK training SAE's forward with the dead
    mask (its AuxK, coefficient 1 by its default), its firing bookkeeping, backward, clipping at 1, Adam."""
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=n, k=k, dtype="float32", device=str(x.device)))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    inp = TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
    since_fired = torch.zeros(n, device=x.device)

    def step():
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = sae.training_forward_pass(inp)
            with torch.no_grad():
                did_fire = out.feature_acts.bool().float().sum(-2).bool()
                since_fired.add_(1)
                since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    aux = lambda: sae.training_forward_pass(inp).losses["auxiliary_reconstruction_loss"]  # noqa: E731
    return step, lambda: _auxk_reaches_encoder(sae, aux, lambda: None if sae.W_enc.grad is None else sae.W_enc.grad.T, dead)


def _auxk_reaches_encoder(sae, aux_loss, encoder_grad_ND, dead) -> bool | None:
    """Whether the AuxK loss alone gives the dead latents' encoder rows a gradient (None: no dead latents)."""
    if dead is None:
        return None
    for p in sae.parameters():
        p.grad = None
    aux_loss().backward()
    grad = encoder_grad_ND()
    return bool(grad is not None and grad[dead].abs().sum() > 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    add_step_options(ap)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--dead-fraction", type=float, default=0.0, help="Share of latents dead (AuxK active)")
    a = ap.parse_args()
    keep_freed_memory()  # as clipsae's own process does, so that the allocator is the same for all
    torch.set_num_threads(a.threads)
    x = torch.randn(a.batch, a.d, generator=torch.Generator().manual_seed(0)).to(a.device)
    n = a.expansion * a.d
    dead = dead_mask(n, a.dead_fraction, a.device)
    rates = {}
    for name, make in (("sparsify", sparsify_step), ("sae_lens", sae_lens_step)):
        try:
            step, encoder_check = make(a.d, n, a.k, x, dead, a.precision == "bf16")
        except ImportError as exc:
            rates[name] = f"not installed ({exc})"
            continue
        rates[name] = _rate(step, a.batch, 2, a.steps)
        rates[f"{name}_auxk_reaches_encoder"] = encoder_check()
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
