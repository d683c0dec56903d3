"""MSAE (Zaigrajew et al., "Interpreting CLIP with Hierarchical Sparse Autoencoders") checkpoints: one
``.pth`` file saved by its train.py, {``model``: {``pre_bias`` (d), ``encoder`` (d, n), ``latent_bias`` (n),
``decoder`` (n, d), absent when tied}, ``mean_center``, ``scaling_factor``, ``target_norm``}. Its
configuration is in the file name, as its ``load_model`` parses it:
``{n}_{d}_{activation}[_{k}]_[UW|RW]_{tied}_{normalize}_{soft_cap}_…``.

Its ``SAE`` wrapper: x′ = (x − mean_center)·scaling_factor; z = (x′ − pre_bias)·encoder + latent_bias;
codes = soft_cap·tanh(act(z)/soft_cap) (no cap when soft_cap is 0); x̂ = (codes·decoder + pre_bias)/
scaling_factor + mean_center. Its ``encode`` returns two codes: the top-k ones (``TopKReLU_k``: the k
largest of z, then a ReLU; ``TopK_k``: without the ReLU) and a "full" ReLU of every z. We load the
top-k encode, the sparse one; a ``ReLU`` file has only one. ``TopKabs_k`` and ``TopKabsReLU_k`` select
the k largest |z| of each image and code them as |z| (the ReLU after an absolute value changes
nothing). Batch top-k selections (``BatchTopK*``) choose across a training batch, so they give no
per-image code, and ``normalize=True`` files cannot be decoded by MSAE's own wrapper: both are refused.
"""

import re
from pathlib import Path

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, need_tensors, pickle_mentions, torch_load
from clipsae.train.model import SparseAutoencoder

_NAME = re.compile(r"^(\d+)_(\d+)_([A-Za-z]+)_([^_]+)_(?:(?:UW|RW)[^_]*_)?(True|False)_(True|False)_([0-9.]+)")
ACTIVATIONS = {"TopKReLU": "topk", "TopK": "topk_signed", "TopKabs": "topk_abs", "TopKabsReLU": "topk_abs",
               "ReLU": "standard"}

VARIANTS = {"TopKReLU": "the k largest z, then a ReLU", "TopK": "the k largest z, signed",
            "TopKabs": "the k largest |z|, coded as |z|", "TopKabsReLU": "the k largest |z|, coded as |z|"}


def parse_name(p: Path) -> dict:
    """The configuration MSAE's load_model reads from a checkpoint's file name."""
    m = _NAME.match(p.name)
    if m is None:
        raise ClipsaeError(f"{p.name} does not name an MSAE configuration (n_d_activation_k_[UW|RW]_tied_normalize_"
                           f"softcap_…): MSAE keeps its configuration in the file name, so keep the name it was saved with")
    n, d, act, arg, tied, normalize, cap = m.groups()
    return {"n_latents": int(n), "n_inputs": int(d), "activation": act, "k": int(arg) if "TopK" in act else None,
            "activation_name": f"{act}_{arg}" if "TopK" in act else act, "tied": tied == "True",
            "normalize": normalize == "True", "soft_cap": float(cap)}


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    cfg = parse_name(p)
    if cfg["normalize"]:
        raise ClipsaeError(f"{p.name} was trained with normalize=True, which MSAE's own SAE wrapper cannot decode "
                           f"(it needs per-row statistics it does not keep); clipsae does not read it")
    if cfg["activation"] not in ACTIVATIONS:
        why = (" (a batch top-k selects across a training batch: it gives no code of one image)"
               if cfg["activation"].startswith("BatchTopK") else "")
        raise ClipsaeError(f"{p.name}: MSAE activation {cfg['activation_name']!r} is not supported; clipsae reads "
                           f"{', '.join(a + '_k' if 'TopK' in a else a for a in ACTIVATIONS)}{why}")
    ckpt = torch_load(p, device)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ClipsaeError(f"{p} is not an MSAE checkpoint: it holds no model state dict")
    missing = [key for key in ("mean_center", "scaling_factor") if key not in ckpt]
    if missing:
        raise ClipsaeError(f"{p} lacks {', '.join(missing)} beside its model")
    w = ckpt["model"]
    need_tensors(w, ("pre_bias", "encoder", "latent_bias") + (() if cfg["tied"] else ("decoder",)), p)
    decoder = w["encoder"].t().contiguous() if cfg["tied"] else w["decoder"]
    mean = ckpt["mean_center"]
    mean = mean.float() if isinstance(mean, torch.Tensor) else torch.tensor(float(mean))
    variant = (f"top-k encode, k={cfg['k']}, {VARIANTS[cfg['activation']]}" if cfg["k"] else "ReLU encode")
    ours = {"format": "msae", **cfg, "variant": variant, "target_norm": float(ckpt.get("target_norm", 0) or 0)}
    model = SparseAutoencoder(ACTIVATIONS[cfg["activation"]], w["encoder"].T, w["latent_bias"], decoder, w["pre_bias"],
                              k=cfg["k"], cfg=ours, input_norm="affine", norm_mean=mean,
                              norm_scale=float(ckpt["scaling_factor"]), soft_cap=cfg["soft_cap"])
    return model, p


FORMAT = SAEFormat(
    name="msae",
    needs="an MSAE .pth file (model with pre_bias, encoder, latent_bias; mean_center, scaling_factor)",
    detect=lambda p: p.is_file() and pickle_mentions(p, b"mean_center", b"scaling_factor"),
    load=load,
)
