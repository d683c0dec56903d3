"""Seed stability: how many of the features two seeds learn are the same direction, counted over the
latents that fired, beside the same count for their initial weights.

Dead and barely trained latents keep their initial directions, so two SAEs started from the same draws
share those directions whether or not they learned anything alike, and two seeds share almost none.
The score is therefore taken over live latents only (those that fired on the encoded store), and the
overlap their initial weights already had is reported beside it: a stability well above the initial
overlap is learned.

For seeds a and b with live decoder rows â_i, b̂_j (unit length): the one-to-one matching (Hungarian)
maximising Σ â_i·b̂_j, and the share of its min(n_a, n_b) pairs with cosine ≥ :data:`THRESHOLD`.
"""

import itertools
import json
from pathlib import Path

import numpy as np
import torch

from clipsae.analysis.features.dictionary_match import MAX_MATCHING, match_dictionaries

THRESHOLD = 0.7


def matched_share(dec_a: torch.Tensor, dec_b: torch.Tensor, threshold: float = THRESHOLD) -> float:
    """The share of one-to-one matched pairs of rows with cosine ≥ ``threshold`` (nan when a side is empty
    or too large to match)."""
    if not len(dec_a) or not len(dec_b):
        return float("nan")
    m = match_dictionaries(dec_a, dec_b, max_matching=MAX_MATCHING)
    if not m.matched:
        return float("nan")
    pairs = min(len(dec_a), len(dec_b))
    return float((np.nan_to_num(m.matched_cos_A, nan=-2) >= threshold).sum() / pairs)


def clipsae_section(sae_path: str | Path | None) -> dict | None:
    """The ``clipsae`` block of a clipsae SAE's cfg.json (its spec, run seed and settings), or None."""
    cfg = Path(sae_path or "") / "cfg.json"
    if not cfg.is_file():
        return None
    return json.loads(cfg.read_text()).get("clipsae")


def unseeded_label(section: dict) -> str:
    """A clipsae SAE's label without the ``-seed<N>`` of a seed list: what its seeds share."""
    spec = section.get("spec", {})
    return section.get("label", "").removesuffix(f"-seed{spec['seed']}") if "seed" in spec else section.get("label", "")


def initial_decoder_of(section: dict) -> torch.Tensor:
    """The decoder a clipsae SAE started from, drawn again from the seed and label its cfg.json records."""
    from clipsae.train.init import draw_decoder, generator_seed

    spec = section["spec"]
    seed = spec.get("seed", section.get("seed", 0))
    n = spec.get("latents") or spec["expansion"] * spec["d"]
    return draw_decoder(n, spec["d"], generator_seed(int(seed), unseeded_label(section)))


def seed_stability(decoders: list[torch.Tensor], live: list[np.ndarray], initial: list[torch.Tensor | None]) -> dict:
    """Over every pair of seeds: the mean matched share of live decoder rows (``stability``), the same for
    the initial decoders' rows of those latents (``stability_init``, nan where an initial decoder is unknown),
    and the mean number of live latents (``live``)."""
    learned, init = [], []
    for a, b in itertools.combinations(range(len(decoders)), 2):
        la, lb = torch.from_numpy(live[a]), torch.from_numpy(live[b])
        learned.append(matched_share(decoders[a][la], decoders[b][lb]))
        if initial[a] is not None and initial[b] is not None:
            init.append(matched_share(initial[a][la], initial[b][lb]))
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    return {"stability": mean(learned), "stability_init": mean(init) if len(init) == len(learned) else float("nan"),
            "live": float(np.mean([x.sum() for x in live]))}
