"""dictionary_learning (saprmarks/dictionary_learning) folders: ``ae.pt`` (a state dict) and ``config.json``
whose ``trainer.dict_class`` names the class that wrote it. Each class's own ``encode`` is the formula:

- ``AutoEncoder``: f = ReLU(encoder(x − bias)), x̂ = decoder(f) + bias; ``encoder.weight`` is (n, d),
  ``decoder.weight`` (d, n). Its ``from_pretrained`` normalises the decoder columns and rescales
  the encoder to match (the same reconstructions, codes in units of unit-norm directions); so do we.
- ``AutoEncoderTopK``: the k largest of ReLU(encoder(x − b_dec)); x̂ = decoder(f) + b_dec.
- ``BatchTopKSAE``: at inference ReLU(encoder(x − b_dec)) kept where above the learned scalar
  ``threshold`` (a JumpReLU); ``MatryoshkaBatchTopKSAE`` the same with ``W_enc`` (d, n) and
  ``W_dec`` (n, d) parameters and its nested ``group_sizes`` (all groups active, as by default).
- ``JumpReluAutoEncoder``: ReLU(z·1[z > threshold]) with z = x·W_enc + b_enc (no b_dec subtracted).
- ``AutoEncoderNew`` (Anthropic's April 2024 update): f = ReLU(encoder(x)), no bias subtracted;
  x̂ = decoder(f), whose ``decoder.bias`` is the decoder bias. Codes are ``encode``'s, unscaled.

An interrupted run's ``ae.pt`` holds ``{step, ae, optimizer, config, norm_factor}``: ``ae`` is the state dict
of an SAE trained on x / norm_factor (with ``normalize_activations``), which the finished run would have
turned into one for raw x by its ``scale_biases(norm_factor)``: every bias and threshold times norm_factor
(the codes are then norm_factor times the trained SAE's). We do the same; norm_factor None means no scaling.
"""

import json
from pathlib import Path

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, need_tensors, torch_load
from clipsae.train.model import SparseAutoencoder

WEIGHTS, CONFIG = "ae.pt", "config.json"


def _config(p: Path) -> dict | None:
    try:
        cfg = json.loads((p / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and isinstance(cfg.get("trainer"), dict) else None


def _threshold(w: dict, n: int) -> torch.Tensor:
    return w["threshold"].float().reshape(-1).expand(n).clone() if w["threshold"].numel() == 1 else w["threshold"]


def _linear(w: dict, p: Path, bias: str) -> tuple:
    need_tensors(w, ("encoder.weight", "encoder.bias", "decoder.weight", bias), p)
    return w["encoder.weight"], w["encoder.bias"], w["decoder.weight"].T.contiguous(), w[bias]


def _autoencoder(w, p, cfg):
    W_enc, b_enc, W_dec, b_dec = _linear(w, p, "bias")
    norms = W_dec.norm(dim=1)  # as AutoEncoder.from_pretrained(normalize_decoder=True): same outputs
    return SparseAutoencoder("standard", W_enc * norms[:, None], b_enc * norms, W_dec / norms[:, None], b_dec, cfg=cfg)


def _autoencoder_new(w, p, cfg):
    return SparseAutoencoder("standard", *_linear(w, p, "decoder.bias"), cfg=cfg, apply_b_dec_to_input=False)


def _topk(w, p, cfg):
    need_tensors(w, ("k",), p)
    return SparseAutoencoder("topk", *_linear(w, p, "b_dec"), k=int(w["k"]), cfg=cfg)


def _batchtopk(w, p, cfg):
    need_tensors(w, ("threshold",), p)
    W_enc, b_enc, W_dec, b_dec = _linear(w, p, "b_dec")
    return SparseAutoencoder("jumprelu", W_enc, b_enc, W_dec, b_dec, threshold=_threshold(w, W_enc.shape[0]), cfg=cfg)


def _matryoshka(w, p, cfg):
    need_tensors(w, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), p)
    cfg = {**cfg, "group_sizes": w["group_sizes"].tolist()} if "group_sizes" in w else cfg
    return SparseAutoencoder("jumprelu", w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"],
                             threshold=_threshold(w, w["W_enc"].shape[1]), cfg=cfg)


def _jumprelu(w, p, cfg):
    need_tensors(w, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), p)
    return SparseAutoencoder("jumprelu", w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"], threshold=w["threshold"],
                             cfg=cfg, apply_b_dec_to_input=False)


CLASSES = {"AutoEncoder": _autoencoder, "AutoEncoderNew": _autoencoder_new, "AutoEncoderTopK": _topk, "BatchTopKSAE": _batchtopk,
           "MatryoshkaBatchTopKSAE": _matryoshka, "JumpReluAutoEncoder": _jumprelu}


SCALED_BY_NORM_FACTOR = ("encoder.bias", "bias", "decoder.bias", "b_enc", "b_dec", "threshold")


def _finished(ckpt: dict, p: Path) -> dict:
    """The state dict an interrupted run's checkpoint would have been saved as at the end (module docstring)."""
    nf = ckpt.get("norm_factor")
    if nf is None:
        return ckpt["ae"]
    try:
        nf = float(nf)
    except (TypeError, ValueError):
        raise ClipsaeError(f"{p / WEIGHTS}: norm_factor {nf!r} is not a number") from None
    return {k: v * nf if k in SCALED_BY_NORM_FACTOR else v for k, v in ckpt["ae"].items()}


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    cfg = _config(p)
    if cfg is None:
        raise ClipsaeError(f"{p / CONFIG} is missing or has no 'trainer' section")
    dict_class = cfg["trainer"].get("dict_class")
    if dict_class not in CLASSES:
        raise ClipsaeError(f"{p}: dictionary_learning dict_class {dict_class!r} is not supported; clipsae reads "
                           f"{', '.join(CLASSES)}")
    w = torch_load(p / WEIGHTS, device)
    if not isinstance(w, dict):
        raise ClipsaeError(f"{p / WEIGHTS} is not a state dict")
    if isinstance(w.get("ae"), dict) and "step" in w:
        w = _finished(w, p)
    return CLASSES[dict_class](w, p, {"format": "dictionary_learning", **cfg["trainer"]}), p / WEIGHTS


FORMAT = SAEFormat(
    name="dictionary_learning",
    needs=f"{WEIGHTS} and {CONFIG} (dictionary_learning)",
    detect=lambda p: p.is_dir() and (p / WEIGHTS).is_file() and _config(p) is not None,
    load=load,
)
