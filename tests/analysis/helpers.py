"""Small stores and SAEs (in SAELens's own layout) for the analysis tests, with plain references."""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from clipsae.store.writer import write_store

D, N_LATENTS = 8, 24
GRID = (2, 2)
N_TOKENS = 1 + GRID[0] * GRID[1]


def make_store(path: Path, n_parts: int = 3, per_part: int = 7, seed: int = 0, d: int = D, labels_mod: int = 4,
               key_prefix: str = "img", embed_d: int | None = None) -> Path:
    """A store of ``n_parts`` parts of ``per_part`` images with CLS + 2×2 patch tokens; labels cycle.
    With ``embed_d``, also a pooled ``embed`` hook of that width."""
    rng = np.random.default_rng(seed)
    for p in range(n_parts):
        keys = [f"{key_prefix}{p * per_part + i:05d}" for i in range(per_part)]
        hooks = {"blocks.0": rng.standard_normal((per_part, N_TOKENS, d)).astype(np.float32)}
        layouts = {"blocks.0": {"cls_token": True, "grid": list(GRID), "meaning": "CLS then patches"}}
        if embed_d:
            hooks["embed"] = rng.standard_normal((per_part, embed_d)).astype(np.float32)
            layouts["embed"] = {"cls_token": False, "grid": None, "meaning": "image embedding"}
        write_store(path, hooks, keys, labels=[(p * per_part + i) % labels_mod for i in range(per_part)],
                    attrs={"model": "test"}, dtype="float32", part=f"part-{p:03d}", layouts=layouts)
    return path


def sae_weights(seed: int = 0, d: int = D, n: int = N_LATENTS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d, n, generator=g) / d**0.5, "b_enc": torch.randn(n, generator=g) * 0.1,
            "W_dec": torch.randn(n, d, generator=g) * 0.5, "b_dec": torch.randn(d, generator=g) * 0.1}


def saelens_dir(path: Path, cfg: dict, tensors: dict) -> Path:
    """An SAE folder as SAELens writes one: cfg.json + sae_weights.safetensors."""
    path.mkdir(parents=True)
    d, n = tensors["W_enc"].shape
    (path / "cfg.json").write_text(json.dumps({"d_in": d, "d_sae": n, "dtype": "float32", "device": "cpu",
                                               "normalize_activations": "none", **cfg}))
    save_file(tensors, str(path / "sae_weights.safetensors"))
    return path


def reference_codes(cfg: dict, w: dict, x: torch.Tensor) -> torch.Tensor:
    """SAELens's encode written out: (x − b_dec) W_enc + b_enc, then TopK, ReLU or JumpReLU."""
    z = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    if cfg["architecture"] == "topk":
        top = z.topk(cfg["k"], dim=-1)
        return torch.zeros_like(z).scatter(-1, top.indices, top.values.relu())
    if cfg["architecture"] == "jumprelu":
        return torch.relu(z) * (z > w["threshold"])
    return torch.relu(z)


def store_from_tars(path: Path, tars: list[Path], seed: int = 0, embed_d: int | None = None,
                    patch_labels: bool = False) -> Path:
    """A store with one part per webdataset tar (its keys, labels and path), random activations;
    with ``embed_d``, also a pooled ``embed`` hook of that width; with ``patch_labels``, each patch's class
    from the tar's masks (mask_classes.json beside it), cut straight into the 2×2 grid."""
    from clipsae.pipeline.masks import decode_mask, read_mask_classes
    from clipsae.pipeline.masks import patch_labels as labels_of_mask
    from clipsae.pipeline.tario import TarReport, iter_samples, iter_samples_with

    rng = np.random.default_rng(seed)
    for i, tar in enumerate(sorted(tars)):
        samples = list(iter_samples(str(tar), None, TarReport()))
        extra = {}
        if patch_labels:
            cut = [labels_of_mask(decode_mask(m), GRID) for *_, m in iter_samples_with(str(tar), None, TarReport(), "seg.png")]
            extra = {"mask_classes": read_mask_classes(Path(tar).parent / "mask_classes.json"),
                     "patch_labels": {f"{GRID[0]}x{GRID[1]}": (np.stack([c[0] for c in cut]), np.stack([c[1] for c in cut]))}}
        hooks = {"blocks.0": rng.standard_normal((len(samples), N_TOKENS, D)).astype(np.float32)}
        layouts = {"blocks.0": {"cls_token": True, "grid": list(GRID)}}
        if embed_d:
            hooks["embed"] = rng.standard_normal((len(samples), embed_d)).astype(np.float32)
            layouts["embed"] = {"cls_token": False, "grid": None}
        write_store(path, hooks, [k for k, _, _ in samples], labels=[lb for _, _, lb in samples],
                    attrs={"model": "test"}, dtype="float32", part=f"part-{i:03d}", source=str(tar), layouts=layouts,
                    **extra)
    return path
