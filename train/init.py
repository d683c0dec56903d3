"""An SAE's initial weights, a function of its seed and settings alone: the trainer starts from them,
and the seed-stability analysis draws them again to say how much two seeds share before training
(from what an exported SAE records, without the training code)."""

import hashlib

import torch

from clipsae.train.spec import SAESpec


def generator_seed(seed: int, unseeded_label: str) -> int:
    """The generator seed of an SAE's initialisation: its seed and its label without the seed, so that an
    SAE trained alone equals the same SAE trained inside a sweep."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{unseeded_label}".encode(), digest_size=7).digest(), "little")


def draw_decoder(d_sae: int, d: int, generator_seed_: int) -> torch.Tensor:
    """W_dec (d_sae, d) at initialisation: Gaussian rows scaled to unit norm (W_enc starts as a copy)."""
    W_dec = torch.randn(d_sae, d, generator=torch.Generator().manual_seed(generator_seed_))
    return W_dec / W_dec.norm(dim=1, keepdim=True)


def initial_decoder(spec: SAESpec, run_seed: int) -> torch.Tensor:
    """``spec``'s initial decoder: drawn from its own seed, or the run's where it has none."""
    seed = spec.seed if spec.seed is not None else run_seed
    return draw_decoder(spec.d_sae, spec.d, generator_seed(seed, spec.unseeded.label))
