"""A planted hierarchical activation set, as in the Matryoshka SAE papers: each image carries one parent
feature and one of that parent's children, so an SAE can absorb parents into children; with the class
names and the hierarchy ``analyze absorption`` reads."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsae.store.writer import write_store

HOOK = "embed"


@dataclass(frozen=True)
class PlantedHierarchy:
    """Where the planted store is, and the files ``analyze absorption --classes --hierarchy`` takes."""

    store: Path
    classes: Path
    hierarchy: Path


def write_planted_hierarchy(root: Path, seed: int = 0, n_images: int = 6000, parents: int = 4, children: int = 12,
                            d: int = 64, noise: float = 0.02) -> PlantedHierarchy:
    """``n_images`` rows x = a·p + b·c + noise in ``root/planted.zarr`` (hook ``embed``, one token each): p the
    direction of a parent drawn uniformly, c of one of its children drawn uniformly, a and b uniform in
    [0.8, 1.2]; the parents' and children's directions orthonormal. Each image's label is its child."""
    if parents * (1 + children) > d:
        raise ValueError(f"{parents} parents with {children} children each need d ≥ {parents * (1 + children)}")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.standard_normal((d, d)))[0][: parents * (1 + children)]
    parent = rng.integers(0, parents, n_images)
    child = parent * children + rng.integers(0, children, n_images)
    x = (directions[parent] * rng.uniform(0.8, 1.2, (n_images, 1))
         + directions[parents + child] * rng.uniform(0.8, 1.2, (n_images, 1))
         + noise * rng.standard_normal((n_images, d)))
    names = {i: f"p{i // children}c{i % children}" for i in range(parents * children)}
    out = PlantedHierarchy(root / "planted.zarr", root / "classes.json", root / "hierarchy.json")
    out.classes.write_text(json.dumps(names, indent=1))
    out.hierarchy.write_text(json.dumps({f"p{p}": [names[p * children + c] for c in range(children)]
                                         for p in range(parents)}, indent=1))
    write_store(out.store, {HOOK: x.astype(np.float32)}, [f"img{i:06d}" for i in range(n_images)], labels=child,
                attrs={"model": f"planted-hierarchy(seed={seed})"}, dtype="float32")
    return out
