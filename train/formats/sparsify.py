"""EleutherAI's sparsify checkpoints: ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight``
(d_sae, d_in), ``encoder.bias``, ``W_dec`` (d_sae, d_in), ``b_dec``; TopK on ReLU(encoder(x − b_dec))."""

from pathlib import Path

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, folder_with, need_tensors
from clipsae.train.formats.saelens import CFG_FILE, read_folder
from clipsae.train.model import SparseAutoencoder

WEIGHTS = "sae.safetensors"


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    cfg, w = read_folder(p, WEIGHTS, device)
    for key, ok in (("activation", "topk"), ("transcode", False), ("skip_connection", False)):
        if cfg.get(key, ok) != ok:
            raise ClipsaeError(f"{p}: sparsify {key}={cfg[key]!r} is not supported; clipsae reads {key}={ok!r}")
    need_tensors(w, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), p)
    model = SparseAutoencoder("topk", w["encoder.weight"], w["encoder.bias"], w["W_dec"], w["b_dec"],
                              k=cfg.get("k"), cfg=cfg)
    return model, p / WEIGHTS


FORMAT = SAEFormat(
    name="sparsify",
    needs=f"{CFG_FILE} and {WEIGHTS} (sparsify)",
    detect=folder_with(CFG_FILE, WEIGHTS),
    load=load,
)
