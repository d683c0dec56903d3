"""Trained SAEs as files other SAE tools load: SAELens's ``cfg.json`` + ``sae_weights.safetensors``.

The input scaling s is folded into the weights, so the saved SAE applies to raw activations:
z = (s·x − b_dec)W_encᵀ + b_enc = (x − b_dec/s)(s·W_enc)ᵀ + b_enc, and x̂ = (W_dec f + b_dec)/s.
The files take SAELens's orientation, ``W_enc`` (d_in, d_sae).
"""

from pathlib import Path

import torch
from safetensors.torch import save_file

from clipsae.files import atomic_write, write_json
from clipsae.train.load import CFG_FILE, METRICS_FILE, SAELENS_WEIGHTS
from clipsae.train.model import ACTIVATIONS, SparseAutoencoder
from clipsae.train.sae import TrainingSAE

SPARSITY_FILE = "sparsity.safetensors"


@torch.no_grad()
def to_inference(sae: TrainingSAE, scale: float) -> SparseAutoencoder:
    """The raw-activation SAE equal to ``sae`` applied to s·x, divided by s, in its architecture's export form."""
    return SparseAutoencoder(sae.arch.export_as, *sae.arch.inference_weights(sae, scale), **sae.arch.export_options(sae))


def save_sae(model: SparseAutoencoder, out: Path, cfg_extra: dict, log10_density=None, metrics: dict | None = None) -> None:
    """Write the SAE directory: cfg.json, sae_weights.safetensors, sparsity.safetensors, metrics.json."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {"W_enc": model.W_enc.T, "b_enc": model.b_enc, "W_dec": model.W_dec, "b_dec": model.b_dec}
    if model.architecture == "jumprelu":
        tensors["threshold"] = model.threshold
    atomic_write(out / SAELENS_WEIGHTS, lambda p: save_file({k: v.detach().contiguous() for k, v in tensors.items()}, p))
    if log10_density is not None:
        atomic_write(out / SPARSITY_FILE, lambda p: save_file({"sparsity": log10_density.contiguous()}, p))
    if metrics is not None:
        write_json(out / METRICS_FILE, metrics)
    cfg = {
        "architecture": model.architecture,
        "d_in": model.d_in,
        "d_sae": model.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        **({"k": model.k} if ACTIVATIONS[model.architecture].needs_k else {}),
        **cfg_extra,
    }
    # cfg.json last: its presence means the directory is whole.
    write_json(out / CFG_FILE, cfg)
