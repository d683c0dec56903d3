"""EleutherAI's sparsify checkpoints: ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight``
(d_sae, d_in), ``encoder.bias``, ``W_dec`` (d_sae, d_in), ``b_dec``; codes from ReLU(encoder(x − b_dec)):
``activation: topk``, its k largest; ``activation: groupmax``, the largest of each of k contiguous
groups of d_sae/k latents (its ``select_topk``)."""

from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, folder_with, need_tensors
from clipsae.train.formats.saelens import CFG_FILE, read_folder
from clipsae.train.model import SparseAutoencoder

WEIGHTS = "sae.safetensors"


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    cfg, w = read_folder(p, WEIGHTS, device)
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise ClipsaeError(f"{p}: sparsify activation={activation!r} is not supported; clipsae reads topk and groupmax")
    for key, ok in (("transcode", False), ("skip_connection", False)):
        if cfg.get(key, ok) != ok:
            raise ClipsaeError(f"{p}: sparsify {key}={cfg[key]!r} is not supported; clipsae reads {key}={ok!r}")
    need_tensors(w, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), p)
    n, k = w["W_dec"].shape[0], cfg.get("k")
    if activation == "groupmax" and (not isinstance(k, int) or k < 1 or n % k):
        raise ClipsaeError(f"{p}: a groupmax SAE's {n} latents must split into k groups of equal size, and k is {k!r}")
    model = SparseAutoencoder(activation, w["encoder.weight"], w["encoder.bias"], w["W_dec"], w["b_dec"],
                              k=cfg.get("k"), cfg=cfg)
    return model, p / WEIGHTS


FORMAT = SAEFormat(
    name="sparsify",
    needs=f"{CFG_FILE} and {WEIGHTS} (sparsify)",
    detect=folder_with(CFG_FILE, WEIGHTS),
    load=load,
)
