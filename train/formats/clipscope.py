"""CLIP-Scope's checkpoints (Lewington's ``clipscope``): one ``.pt`` file saved by ``torch.save`` holding
``model_state_dict`` = {``pre_b`` (d), ``enc`` (d, n), ``dec`` (n, d)} and ``k``, ``d_in``, ``n_features``.

Their ``TopKSAE``: h = (x − pre_b)·enc, codes = the k largest entries of h **without a ReLU** (a code
may be negative), x̂ = codes·dec + pre_b. CLIP-Scope trained on activations standardised per
dimension with statistics it did not ship; on raw activations the codes differ from theirs.
"""

from pathlib import Path

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.formats import SAEFormat, need_tensors, pickle_mentions, torch_load
from clipsae.train.model import SparseAutoencoder


def load(p: Path, device: str) -> tuple[SparseAutoencoder, Path]:
    ckpt = torch_load(p, device)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model_state_dict"), dict):
        raise ClipsaeError(f"{p} is not a CLIP-Scope checkpoint: it holds no model_state_dict")
    missing = [key for key in ("k", "d_in", "n_features") if key not in ckpt]
    if missing:
        raise ClipsaeError(f"{p} lacks {', '.join(missing)} beside its model_state_dict")
    w = ckpt["model_state_dict"]
    need_tensors(w, ("pre_b", "enc", "dec"), p)
    n = int(ckpt["n_features"])
    cfg = {"format": "clipscope", "k": int(ckpt["k"]), "d_in": int(ckpt["d_in"]), "n_features": n,
           "formula": "codes = TopK((x - pre_b) enc), no ReLU; x_hat = codes dec + pre_b"}
    model = SparseAutoencoder("topk_signed", w["enc"].T, torch.zeros(n, dtype=w["enc"].dtype, device=w["enc"].device),
                              w["dec"], w["pre_b"], k=int(ckpt["k"]), cfg=cfg)
    return model, p


FORMAT = SAEFormat(
    name="clipscope",
    needs="a CLIP-Scope .pt file (model_state_dict with pre_b, enc, dec; k, d_in, n_features)",
    detect=lambda p: p.is_file() and pickle_mentions(p, b"model_state_dict", b"pre_b", b"n_features"),
    load=load,
)
