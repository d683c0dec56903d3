"""Feature edits and weighted feature lists as users type them, parsed once for every command.

An edit list is comma-separated: ``12:0`` sets feature 12 to 0 (ablate), ``12:x3`` multiplies it by 3,
``12=5.0`` clamps it to 5.0 (also where it was silent). A weighted list is ``12,625:2.0``: weights
default to 1.
"""

from dataclasses import dataclass

import numpy as np
import torch

from clipsae.errors import ClipsaeError


@dataclass(frozen=True)
class Edit:
    """One feature's change: ``kind`` is "set" (``12:0``), "scale" (``12:x3``) or "clamp" (``12=5.0``)."""

    feature: int
    kind: str
    value: float

    def text(self) -> str:
        return {"set": f"{self.feature}:{self.value:g}", "scale": f"{self.feature}:x{self.value:g}",
                "clamp": f"{self.feature}={self.value:g}"}[self.kind]


def _feature(text: str, n_features: int, option: str, item: str) -> int:
    try:
        f = int(text)
    except ValueError:
        raise ClipsaeError(f"{option}: {item!r} does not start with a feature index") from None
    if not 0 <= f < n_features:
        raise ClipsaeError(f"{option}: feature {f} is out of range: these codes have {n_features} features "
                           f"(0–{n_features - 1})")
    return f


def _number(text: str, option: str, item: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ClipsaeError(f"{option}: {item!r} has no number after the feature") from None
    if not np.isfinite(v):
        raise ClipsaeError(f"{option}: {item!r} is not a finite number")
    return v


def codes_are_signed(codes) -> bool:
    """Whether cached codes may be negative (an SAE whose top-k keeps negative pre-activations)."""
    return (codes.identity.get("sae") or {}).get("architecture") == "topk_signed"


def parse_edits(text: str, n_features: int, option: str = "--edit", signed: bool = False) -> list[Edit]:
    """``"12:0,625:x2,7=5.0"`` → edits; one line naming the item for anything malformed or out of range.
    Unless the codes are ``signed``, a negative value or factor is refused: it would feed the decoder a
    code the SAE never produces."""
    edits = []
    for item in (s.strip() for s in text.split(",")):
        if "=" in item:
            f, v = item.split("=", 1)
            edits.append(Edit(_feature(f, n_features, option, item), "clamp", _number(v, option, item)))
        elif ":" in item:
            f, v = item.split(":", 1)
            scale = v.startswith("x")
            edits.append(Edit(_feature(f, n_features, option, item), "scale" if scale else "set",
                              _number(v[1:] if scale else v, option, item)))
        else:
            raise ClipsaeError(f"{option}: {item!r} is not FEATURE:VALUE, FEATURE:xFACTOR or FEATURE=VALUE")
        if edits[-1].value < 0 and not signed:
            raise ClipsaeError(f"{option}: {item!r} is negative, but this SAE's codes never are (a ReLU keeps them "
                               f"at 0 or above); use 0 to ablate a feature")
    seen = [e.feature for e in edits]
    if len(set(seen)) != len(seen):
        raise ClipsaeError(f"{option} names feature {next(f for f in seen if seen.count(f) > 1)} twice")
    return edits


def apply_edits(z: torch.Tensor, edits: list[Edit], where: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of codes ``z`` (…, features) with the edits made; ``where`` (…, boolean) limits them to some rows.
    A clamp sets the value whether or not the feature was active."""
    out = z.clone()
    for e in edits:
        col = out[..., e.feature]
        new = torch.zeros_like(col) + e.value if e.kind != "scale" else col * e.value
        out[..., e.feature] = new if where is None else torch.where(where, new, col)
    return out


def parse_weighted(text: str, n_features: int, option: str = "--features") -> dict[int, float]:
    """``"12,625:2.0"`` → {12: 1.0, 625: 2.0}; one line for anything malformed, out of range or repeated."""
    weights: dict[int, float] = {}
    for item in (s.strip() for s in text.split(",")):
        f, _, w = item.partition(":")
        feature = _feature(f, n_features, option, item)
        if feature in weights:
            raise ClipsaeError(f"{option} names feature {feature} twice")
        weights[feature] = _number(w, option, item) if w else 1.0
        if weights[feature] <= 0:
            raise ClipsaeError(f"{option}: {item!r} has a weight of {weights[feature]:g}; a feature's weight must be "
                               f"positive (the score adds weight × value over the features an image fires)")
    return weights
