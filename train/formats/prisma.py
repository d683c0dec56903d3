"""ViT-Prisma SAE folders: ``config.json`` (a ``VisionModelSAERunnerConfig``) and one ``.pt`` state dict with
``W_enc`` (d_in, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_in), ``b_dec``.

Their ``encode_standard``: x' = norm_in(x), f = act((x' − b_dec)·W_enc + b_enc), x̂ = norm_out(f·W_dec + b_dec),
with ``activation_fn_str`` ``relu`` or ``topk`` (``activation_fn_kwargs.k``; the k largest, then a ReLU)
and ``normalize_activations`` ``none``, ``constant_norm_rescale`` (x·√d/‖x‖ per row) or ``layer_norm``
(per row, (x − mean)/(std + 1e-5), undone as x̂·std + mean). The hook: ``blocks.L.hook_resid_post`` is
the output of residual block L, our ``resid.L``; ``cls_token_only`` means it was trained on CLS tokens.
Older files that pickle the config object beside the weights are refused (they need ViT-Prisma to unpickle).
"""

import json
from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, need_tensors, torch_load
from clipsae.train.model import SparseAutoencoder

CONFIG = "config.json"
_KEYS = ("activation_fn_str", "hook_point_layer", "layer_subtype")
ACTIVATIONS = {"relu": "standard", "topk": "topk"}
NORMS = ("none", "constant_norm_rescale", "layer_norm")


def _config(p: Path) -> dict | None:
    try:
        cfg = json.loads((p / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and any(k in cfg for k in _KEYS) else None


def _weights_file(p: Path) -> Path:
    found = sorted(p.glob("*.pt"))
    if len(found) != 1:
        raise ClipsaeError(f"{p} holds {len(found)} .pt files{': ' + ', '.join(f.name for f in found) if found else ''};"
                           f" a ViT-Prisma SAE folder holds one, its weights")
    return found[0]


def store_hook(cfg: dict) -> str | None:
    """The store hook a Prisma hook point reads (None where no clipsae hook is the same tensor)."""
    if cfg.get("layer_subtype") == "hook_resid_post" and cfg.get("hook_point_layer") is not None:
        return f"resid.{int(cfg['hook_point_layer'])}"
    return None


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    cfg = _config(p)
    if cfg is None:
        raise ClipsaeError(f"{p / CONFIG} is missing or is not a ViT-Prisma SAE config")
    if cfg.get("architecture", "standard") != "standard":
        raise ClipsaeError(f"{p}: ViT-Prisma architecture {cfg['architecture']!r} is not supported; clipsae reads standard")
    act = cfg.get("activation_fn_str", "relu")
    if act not in ACTIVATIONS:
        raise ClipsaeError(f"{p}: ViT-Prisma activation_fn_str {act!r} is not supported; clipsae reads "
                           f"{', '.join(ACTIVATIONS)}")
    norm = cfg.get("normalize_activations") or "none"
    if norm not in NORMS:
        raise ClipsaeError(f"{p}: ViT-Prisma normalize_activations {norm!r} is not supported; clipsae reads {', '.join(NORMS)}")
    weights = _weights_file(p)
    w = torch_load(weights, device)
    if isinstance(w, dict) and "state_dict" in w and "cfg" in w:
        w = w["state_dict"]
    if not isinstance(w, dict):
        raise ClipsaeError(f"{weights} is not a state dict")
    need_tensors(w, ("W_enc", "b_enc", "W_dec", "b_dec"), weights)
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    ours = {"format": "prisma", **cfg, "hook": store_hook(cfg), "tokens": "cls" if cfg.get("cls_token_only") else None}
    model = SparseAutoencoder(ACTIVATIONS[act], w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"],
                              k=int(k) if k is not None else None, cfg=ours, input_norm=norm)
    return model, weights


FORMAT = SAEFormat(
    name="prisma",
    needs=f"{CONFIG} with activation_fn_str or hook_point_layer and one .pt state dict (ViT-Prisma)",
    detect=lambda p: p.is_dir() and _config(p) is not None and any(p.glob("*.pt")),
    load=load,
)
