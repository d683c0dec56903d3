"""Loading an SAE from disk, whoever trained it: clipsae, SAELens, or EleutherAI's sparsify.

- clipsae run directories and SAELens directories: ``cfg.json`` + ``sae_weights.safetensors``
  (SAELens's own layout, which ``clipsae train`` writes). Architectures ``standard`` (ReLU),
  ``topk``, ``jumprelu`` and ``batchtopk`` (a SAELens training checkpoint: its ``topk_threshold``
  becomes a JumpReLU threshold, as SAELens does when it saves one for inference).
- sparsify checkpoints: ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight`` (d_sae, d_in),
  ``encoder.bias``, ``W_dec`` (d_sae, d_in), ``b_dec``; TopK on ReLU(encoder(x − b_dec)).
"""

import hashlib
import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from clipsae.errors import ClipsaeError
from clipsae.train.model import SparseAutoencoder

CFG_FILE = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
METRICS_FILE = "metrics.json"


def _need(weights: dict, names: tuple[str, ...], where: Path) -> None:
    missing = [n for n in names if n not in weights]
    if missing:
        raise ClipsaeError(f"{where} lacks the tensors {', '.join(missing)} (it has {', '.join(sorted(weights))})")


def _from_saelens(cfg: dict, w: dict, where: Path) -> SparseAutoencoder:
    arch = cfg.get("architecture", "standard")
    _need(w, ("W_enc", "b_enc", "W_dec", "b_dec"), where)
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise ClipsaeError(f"{where}: normalize_activations {norm!r} is not supported; clipsae reads SAEs with 'none'")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ClipsaeError(f"{where}: reshape_activations {cfg['reshape_activations']!r} is not supported")
    threshold = None
    if arch in ("jumprelu", "batchtopk"):
        if "threshold" in w:
            threshold = w["threshold"]
        elif "log_threshold" in w:
            threshold = w["log_threshold"].exp()
        elif "topk_threshold" in w:
            threshold = w["topk_threshold"].reshape(-1)[:1].expand(w["b_enc"].shape)
        else:
            raise ClipsaeError(f"{where} is a {arch} SAE but holds no threshold, log_threshold or topk_threshold")
        arch = "jumprelu"
    return SparseAutoencoder(arch, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], k=cfg.get("k"), threshold=threshold,
                             cfg=cfg, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                             rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)))


def _from_sparsify(cfg: dict, w: dict, where: Path) -> SparseAutoencoder:
    for key, ok in (("activation", "topk"), ("transcode", False), ("skip_connection", False)):
        if cfg.get(key, ok) != ok:
            raise ClipsaeError(f"{where}: sparsify {key}={cfg[key]!r} is not supported; clipsae reads {key}={ok!r}")
    _need(w, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), where)
    return SparseAutoencoder("topk", w["encoder.weight"].T.contiguous(), w["encoder.bias"], w["W_dec"], w["b_dec"],
                             k=cfg.get("k"), cfg=cfg)


def _sweep_hint(p: Path) -> str:
    members = sorted(x.name for x in p.iterdir() if x.is_dir() and (x / CFG_FILE).is_file())
    return f"; it is a sweep run directory, whose SAEs are in {', '.join(str(p / m) for m in members)}" if members else ""


def load_sae(path: str | Path, device: str = "cpu") -> SparseAutoencoder:
    """Load the SAE in directory ``path`` (clipsae, SAELens or sparsify layout) onto ``device``."""
    p = Path(path)
    if not p.is_dir():
        raise ClipsaeError(f"{p} is not a directory holding an SAE")
    weights = next((p / f for f in (SAELENS_WEIGHTS, SPARSIFY_WEIGHTS) if (p / f).is_file()), None)
    if weights is None or not (p / CFG_FILE).is_file():
        missing = [f for f in (CFG_FILE,) if not (p / f).is_file()] + ([] if weights else [f"{SAELENS_WEIGHTS} (SAELens, clipsae) or {SPARSIFY_WEIGHTS} (sparsify)"])
        raise ClipsaeError(f"{p} is not an SAE directory: it lacks {' and '.join(missing)}{_sweep_hint(p)}")
    try:
        cfg = json.loads((p / CFG_FILE).read_text())
        w = load_file(str(weights), device=str(device))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ClipsaeError(f"cannot read the SAE in {p}: {exc}") from None
    if not isinstance(cfg, dict):
        raise ClipsaeError(f"{p / CFG_FILE} is not a JSON object")
    fmt = "sparsify" if weights.name == SPARSIFY_WEIGHTS else ("clipsae" if "clipsae" in cfg else "saelens")
    model = (_from_sparsify if fmt == "sparsify" else _from_saelens)(cfg, w, p)
    with open(weights, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    model.identity = {"path": str(p.resolve()), "format": fmt, "weights_sha256": digest,
                      "architecture": model.architecture, "d_in": model.d_in, "d_sae": model.d_sae}
    # An SAE loaded for inference: no autograd graph behind encode/decode (fine-tuning code may
    # call requires_grad_(True) itself).
    return model.to(device).requires_grad_(False)


def load_metrics(path: str | Path) -> dict | None:
    """The held-out metrics ``clipsae train`` saved next to an SAE, if any."""
    f = Path(path) / METRICS_FILE
    return json.loads(f.read_text()) if f.is_file() else None

