"""Trained SAEs as files other SAE tools load: SAELens's ``cfg.json`` + ``sae_weights.safetensors``.

The input scaling s is folded into the weights, so the saved SAE applies to raw activations:
z = (s·x − b_dec)W_enc + b_enc = (x − b_dec/s)(s·W_enc) + b_enc, and x̂ = (W_dec f + b_dec)/s.
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from clipsae.errors import ClipsaeError
from clipsae.train.sae import TrainingSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
METRICS_FILE = "metrics.json"
SAELENS_ARCH = {"relu": "standard", "topk": "topk", "batchtopk": "jumprelu", "matryoshka": "jumprelu"}


class SparseAutoencoder(nn.Module):
    """An SAE for inference on raw activations, in SAELens's orientation.

    ``W_enc`` (d_in, d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in), and for
    ``jumprelu`` a per-latent ``threshold``. ``architecture`` is ``standard`` (ReLU), ``topk``
    (k largest of ReLU(z)) or ``jumprelu`` (z where z > threshold).
    """

    def __init__(self, architecture: str, W_enc, b_enc, W_dec, b_dec, k: int | None = None, threshold=None,
                 cfg: dict | None = None):
        super().__init__()
        if architecture not in ("standard", "topk", "jumprelu"):
            raise ClipsaeError(f"unsupported SAE architecture {architecture!r}")
        self.architecture, self.k, self.cfg = architecture, k, cfg or {}
        self.W_enc = nn.Parameter(W_enc)
        self.b_enc = nn.Parameter(b_enc)
        self.W_dec = nn.Parameter(W_dec)
        self.b_dec = nn.Parameter(b_dec)
        if threshold is not None:
            self.register_buffer("threshold", threshold)

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes (..., d_sae) of raw activations (..., d_in)."""
        z = (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc
        if self.architecture == "standard":
            return F.relu(z)
        if self.architecture == "topk":
            top = F.relu(z).topk(self.k, dim=-1)
            return torch.zeros_like(z).scatter(-1, top.indices, top.values)
        return z * (z > self.threshold)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., d_in) of codes (..., d_sae)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


@torch.no_grad()
def to_inference(sae: TrainingSAE, scale: float) -> SparseAutoencoder:
    """The raw-activation SAE equal to ``sae`` applied to s·x, divided by s."""
    spec = sae.spec
    arch = SAELENS_ARCH[spec.arch]
    threshold = None
    if arch == "jumprelu":
        threshold = torch.full((spec.n,), float(max(sae.threshold.item(), 0.0)))
    return SparseAutoencoder(
        arch,
        (sae.W_enc * scale).T.contiguous().float().cpu(),
        sae.b_enc.detach().float().cpu().clone(),
        (sae.W_dec / scale).contiguous().float().cpu(),
        (sae.b_dec / scale).float().cpu().clone(),
        k=spec.k if arch == "topk" else None,
        threshold=threshold,
    )


def save_sae(model: SparseAutoencoder, out: Path, cfg_extra: dict, log10_density=None, metrics: dict | None = None) -> None:
    """Write the SAE directory: cfg.json, sae_weights.safetensors, sparsity.safetensors, metrics.json."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": model.W_enc, "b_enc": model.b_enc, "W_dec": model.W_dec, "b_dec": model.b_dec}
    if model.architecture == "jumprelu":
        tensors["threshold"] = model.threshold
    _atomic(out / WEIGHTS_FILE, lambda p: save_file({k: v.detach().contiguous() for k, v in tensors.items()}, p))
    if log10_density is not None:
        _atomic(out / SPARSITY_FILE, lambda p: save_file({"sparsity": log10_density.contiguous()}, p))
    if metrics is not None:
        _atomic(out / METRICS_FILE, lambda p: Path(p).write_text(json.dumps(metrics, indent=2)))
    cfg = {
        "architecture": model.architecture,
        "d_in": model.d_in,
        "d_sae": model.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **({"k": model.k} if model.architecture == "topk" else {}),
        **cfg_extra,
    }
    # cfg.json last: its presence means the directory is whole.
    _atomic(out / CFG_FILE, lambda p: Path(p).write_text(json.dumps(cfg, indent=2)))


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(str(tmp))
    tmp.replace(path)


def load_sae(path: str | Path, device: str = "cpu") -> SparseAutoencoder:
    """Load an SAE directory (ours or SAELens's format) as a module with encode, decode, forward."""
    p = Path(path)
    if not (p / CFG_FILE).is_file() or not (p / WEIGHTS_FILE).is_file():
        raise ClipsaeError(f"{p} is not an SAE directory (needs {CFG_FILE} and {WEIGHTS_FILE})")
    try:
        cfg = json.loads((p / CFG_FILE).read_text())
        w = load_file(str(p / WEIGHTS_FILE), device=device)
        arch = cfg["architecture"]
        return SparseAutoencoder(arch, w["W_enc"], w["b_enc"], w["W_dec"], w["b_dec"], k=cfg.get("k"),
                                 threshold=w.get("threshold"), cfg=cfg)
    except ClipsaeError:
        raise
    except Exception as exc:
        raise ClipsaeError(f"cannot load the SAE in {p}: {exc}") from exc


def load_metrics(path: str | Path) -> dict | None:
    """The held-out metrics saved next to an SAE, if any."""
    f = Path(path) / METRICS_FILE
    return json.loads(f.read_text()) if f.is_file() else None
