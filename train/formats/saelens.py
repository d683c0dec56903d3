"""SAELens directories, which ``clipsae train`` also writes: ``cfg.json`` + ``sae_weights.safetensors``.

Architectures ``standard`` (ReLU), ``topk``, ``jumprelu`` and ``batchtopk`` (a SAELens training
checkpoint: its ``topk_threshold`` becomes a JumpReLU threshold, as SAELens does when it saves one
for inference). z = (x − b_dec) W_enc + b_enc, with W_enc (d_in, d_sae) and W_dec (d_sae, d_in).
``normalize_activations`` ``constant_norm_rescale`` (x·√d/‖x‖) and ``layer_norm`` ((x − mean)/(std + 1e-5),
undone as x̂·std + mean) are applied per row before encoding, as SAELens's ``process_sae_in`` does.
"""

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, first_sentence, folder_with, need_tensors
from clipsae.train.model import SparseAutoencoder

CFG_FILE = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
# SAELens's run-time normalisations, computed per row as its SAE does (model.py's input_norm).
NORMS = ("none", "constant_norm_rescale", "layer_norm")


def read_folder(p: Path, weights: str, device: str) -> tuple[dict, dict]:
    """(cfg.json, tensors) of a folder in SAELens's or sparsify's layout; one line if unreadable."""
    try:
        cfg = json.loads((p / CFG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ClipsaeError(f"cannot read {p / CFG_FILE}: {first_sentence(exc)}") from None
    try:
        w = load_file(str(p / weights), device=str(device))
    except OSError as exc:
        raise ClipsaeError(f"cannot read {p / weights}: {first_sentence(exc)}") from None
    except (SafetensorError, ValueError):
        raise ClipsaeError(f"{p / weights} is damaged or is not a safetensors file: its header does not parse") from None
    if not isinstance(cfg, dict):
        raise ClipsaeError(f"{p / CFG_FILE} is not a JSON object")
    return cfg, w


def _gated_as_jumprelu(w: dict, p: Path) -> dict:
    """A SAELens gated SAE as the JumpReLU it equals: its gate (x′W + b_gate > 0) is the magnitude path's
    z = x′(W ⊙ exp(r_mag)) + b_mag above θ = b_mag − exp(r_mag)·b_gate, and its code is ReLU(z) there."""
    need_tensors(w, ("W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag"), p)
    r = w["r_mag"].exp()
    return {"W_enc": w["W_enc"] * r, "b_enc": w["b_mag"], "W_dec": w["W_dec"], "b_dec": w["b_dec"],
            "threshold": w["b_mag"] - r * w["b_gate"]}


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    cfg, w = read_folder(p, WEIGHTS, device)
    arch = cfg.get("architecture", "standard")
    if arch == "gated":
        w, arch = _gated_as_jumprelu(w, p), "jumprelu"
    need_tensors(w, ("W_enc", "b_enc", "W_dec", "b_dec"), p)
    norm = cfg.get("normalize_activations") or "none"
    if norm not in NORMS:
        why = (" (it needs the dataset's scaling factor, which SAELens folds into the weights when it saves)"
               if norm == "expected_average_only_in" else "")
        raise ClipsaeError(f"{p}: normalize_activations {norm!r} is not supported; clipsae reads {', '.join(NORMS)}{why}")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ClipsaeError(f"{p}: reshape_activations {cfg['reshape_activations']!r} is not supported")
    threshold = None
    if arch in ("jumprelu", "batchtopk"):
        if "threshold" in w:
            threshold = w["threshold"]
        elif "log_threshold" in w:
            threshold = w["log_threshold"].exp()
        elif "topk_threshold" in w:
            threshold = w["topk_threshold"].reshape(-1)[:1].expand(w["b_enc"].shape)
        else:
            raise ClipsaeError(f"{p} is a {arch} SAE but holds no threshold, log_threshold or topk_threshold")
        arch = "jumprelu"
    model = SparseAutoencoder(arch, w["W_enc"].T, w["b_enc"], w["W_dec"], w["b_dec"], k=cfg.get("k"), threshold=threshold,
                              cfg=cfg, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                              rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
                              input_norm=norm)
    return model, p / WEIGHTS


FORMAT = SAEFormat(
    name="saelens",
    needs=f"{CFG_FILE} and {WEIGHTS} (SAELens, clipsae)",
    detect=folder_with(CFG_FILE, WEIGHTS),
    load=load,
)
