"""An SAE's initial weights, a function of its seed and settings alone: the trainer starts from them,
and the seed-stability analysis regenerates them to say how much two seeds share before training."""

import hashlib

import torch

from clipsae.train.spec import SAESpec


def init_seed(run_seed: int, spec: SAESpec) -> int:
    """The generator seed of ``spec``'s initialisation: its own seed (or the run's) and its settings, so that
    an SAE trained alone equals the same SAE trained inside a sweep."""
    seed = spec.seed if spec.seed is not None else run_seed
    return int.from_bytes(hashlib.blake2b(f"{seed}:{spec.unseeded.label}".encode(), digest_size=7).digest(), "little")


def initial_decoder(spec: SAESpec, run_seed: int) -> torch.Tensor:
    """W_dec (d_sae, d) at initialisation: Gaussian rows scaled to unit norm (W_enc starts as a copy)."""
    W_dec = torch.randn(spec.d_sae, spec.d, generator=torch.Generator().manual_seed(init_seed(run_seed, spec)))
    return W_dec / W_dec.norm(dim=1, keepdim=True)
