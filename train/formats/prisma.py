"""ViT-Prisma SAE folders: ``config.json`` (a ``VisionModelSAERunnerConfig``) and one ``.pt`` state dict with
``W_enc`` (d_in, d_sae), ``b_enc``, ``W_dec`` (d_sae, d_in), ``b_dec``.

Their ``encode_standard``: x' = norm_in(x), f = act((x' − b_dec)·W_enc + b_enc), x̂ = norm_out(f·W_dec + b_dec),
with ``activation_fn_str`` ``relu`` or ``topk`` (``activation_fn_kwargs.k``; the k largest, then a ReLU)
and ``normalize_activations`` ``none``, ``constant_norm_rescale`` (x·√d/‖x‖ per row) or ``layer_norm``
(per row, (x − mean)/(std + 1e-5), undone as x̂·std + mean). The hook: ``blocks.L.hook_resid_post`` is
the output of residual block L, our ``resid.L``; ``cls_token_only`` means it was trained on CLS tokens.

Prisma's trainer (``train_sae.py``) checkpoints a folder of ``config.json``, ``n_images_N.pt`` for each
checkpoint N ({``cfg``: the config object pickled, ``state_dict``}) and ``n_images_N_log_feature_sparsity.pt``.
The folder reads as its last checkpoint (the largest N) and a path to one ``n_images_N.pt`` reads that
one; the pickled config object is never run: the state dict is read beside it, and ``config.json`` says
the rest. ``config.json`` must name ``activation_fn_str`` and ``normalize_activations``: Prisma fills an
absent key from its dataclass defaults, which changed between releases (relu to topk in March 2025).
"""

import json
import re
from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, need_tensors, torch_load
from clipsae.train.model import SparseAutoencoder

CONFIG = "config.json"
_KEYS = ("activation_fn_str", "hook_point_layer", "layer_subtype")
_REQUIRED = ("activation_fn_str", "normalize_activations")  # whose defaults changed between Prisma releases
_SPARSITY = "_log_feature_sparsity.pt"
_CHECKPOINT = re.compile(r"^n_images_(\d+)\.pt$")
ACTIVATIONS = {"relu": "standard", "topk": "topk"}
NORMS = ("none", "constant_norm_rescale", "layer_norm")


def _config(p: Path) -> dict | None:
    try:
        cfg = json.loads((p / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and any(k in cfg for k in _KEYS) else None


def _weights_file(p: Path) -> Path:
    """The one state dict of a folder, or the trainer's last checkpoint (the largest n_images_N.pt)."""
    found = sorted(f for f in p.glob("*.pt") if not f.name.endswith(_SPARSITY))
    checkpoints = {int(m.group(1)): f for f in found if (m := _CHECKPOINT.match(f.name))}
    if len(found) == 1:
        return found[0]
    if found and len(checkpoints) == len(found):
        return checkpoints[max(checkpoints)]
    raise ClipsaeError(f"{p} holds {len(found)} weights .pt files{': ' + ', '.join(f.name for f in found) if found else ''};"
                       f" a ViT-Prisma SAE folder holds one, or the trainer's n_images_N.pt checkpoints: name one file")


def store_hook(cfg: dict) -> str | None:
    """The store hook a Prisma hook point reads (None where no clipsae hook is the same tensor)."""
    if cfg.get("layer_subtype") == "hook_resid_post" and cfg.get("hook_point_layer") is not None:
        return f"resid.{int(cfg['hook_point_layer'])}"
    return None


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    folder, weights = (p.parent, p) if p.is_file() else (p, None)
    cfg = _config(folder)
    if cfg is None:
        raise ClipsaeError(f"{folder / CONFIG} is missing or is not a ViT-Prisma SAE config")
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise ClipsaeError(f"{folder / CONFIG} does not name {' or '.join(missing)}, and ViT-Prisma's default for it "
                           f"changed between releases; add the value the SAE was trained with to the file")
    if cfg.get("architecture", "standard") != "standard":
        raise ClipsaeError(f"{p}: ViT-Prisma architecture {cfg['architecture']!r} is not supported; clipsae reads standard")
    act = cfg["activation_fn_str"]
    if act not in ACTIVATIONS:
        raise ClipsaeError(f"{p}: ViT-Prisma activation_fn_str {act!r} is not supported; clipsae reads "
                           f"{', '.join(ACTIVATIONS)}")
    norm = cfg["normalize_activations"] or "none"
    if norm not in NORMS:
        raise ClipsaeError(f"{p}: ViT-Prisma normalize_activations {norm!r} is not supported; clipsae reads {', '.join(NORMS)}")
    weights = weights or _weights_file(folder)
    w = torch_load(weights, device, inert=True)
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


def _detect(p: Path) -> bool:
    if p.is_file():
        return p.suffix == ".pt" and not p.name.endswith(_SPARSITY) and _config(p.parent) is not None
    return p.is_dir() and _config(p) is not None and any(f for f in p.glob("*.pt") if not f.name.endswith(_SPARSITY))


FORMAT = SAEFormat(
    name="prisma",
    needs=f"{CONFIG} with activation_fn_str or hook_point_layer and a .pt state dict (ViT-Prisma)",
    detect=_detect,
    load=load,
)
