"""overcomplete (KempnerInstitute/overcomplete) SAEs: one ``torch.save`` file. The library has no save
function of its own; its users save either the module's ``state_dict()`` or the whole module. Both read
here without running any of its code (a whole module's classes are recorded, never imported).

What overcomplete 0.3's modules compute, in eval mode (``model.eval()``, which fuses the dictionary):

- encoder: ``linear``: z = x·Wᵀ + b (``encoder.final_block.0.weight`` (n, d), ``.bias``), codes from ReLU(z);
  ``mlp_bn_1``: the same with a BatchNorm1d on z before the ReLU (``encoder.final_block.1.{weight, bias,
  running_mean, running_var}``), folded here into W and b with its running statistics;
- dictionary D (n, d): ``dictionary._weights`` with each row divided by (‖row‖₂ + 1e-8) (the
  ``normalization`` the layer was built with, ``l2`` by default), times exp(``dictionary.multiplier``);
  x̂ = codes·D, no bias. The archetypal dictionary (RA-SAE): D = (W⁺·C + Λ)·exp(multiplier), with W⁺ =
  ReLU(``dictionary.W``) rows divided by their sum (+ 1e-8), C = ``dictionary.C`` and Λ = ``dictionary.Relax``
  with each row scaled down to norm ≤ δ;
- ``SAE``: codes = ReLU(z); ``TopKSAE`` and ``RATopKSAE``: the ``top_k`` largest of ReLU(z); ``JumpSAE`` and
  ``RAJumpSAE``: ReLU(z) where it reaches exp(``thresholds``) (the thresholds are stored as logs);
  ``MpSAE``: ``k`` matching-pursuit steps on x itself (no encoder), each adding the largest signed
  correlation ⟨residual, D_j⟩ to code j (a latent picked twice adds up) and taking it off the residual;
  ``BatchTopKSAE``: ReLU(z) where it reaches the scalar ``running_threshold``.

A state dict does not record the class, ``top_k``, ``k``, δ nor the normalisation, and several classes save
the same keys; those are given as ``--sae-options`` (:data:`OPTIONS`). A whole module records them all.
"""

from pathlib import Path

import torch

from clipsae.errors import ClipsaeError
from clipsae.train.formats import PickledObject, SAEFormat, pickle_head, torch_load
from clipsae.train.model import SparseAutoencoder

OPTIONS = {"class": str, "top_k": int, "k": int, "delta": float, "normalization": str}
_BN_EPS = 1e-5  # BatchNorm1d's default, which overcomplete's MLPEncoder keeps
_ENCODER = "encoder.final_block."


def _l2(w):
    return w / (w.norm(dim=1, keepdim=True) + 1e-8)


def _l1(w):
    return w / (w.abs().sum(dim=1, keepdim=True) + 1e-8)


NORMALIZATIONS = {
    "l2": _l2,
    "max_l2": lambda w: w / w.norm(dim=1, keepdim=True).amax(),
    "l1": _l1,
    "max_l1": lambda w: w / w.abs().sum(dim=1, keepdim=True).amax(),
    "identity": lambda w: w,
}

# The classes a state dict's keys leave open, by what the keys show.
_FAMILIES = {
    "encoder": ("SAE", "TopKSAE", "BatchTopKSAE"),
    "no encoder": ("MpSAE", "OMPSAE"),
}
_REFUSED = {
    "BatchTopKSAE": "its inference threshold (running_threshold) is a plain attribute that state_dict() leaves out; "
                    "save the whole module (torch.save(model)) and clipsae reads it",
    "OMPSAE": "its codes come from a non-negative least-squares refit at every step, which clipsae does not run",
    "QSAE": "its codes are quantised to its learned levels (Q), which clipsae does not read",
}
_READ = ("SAE", "TopKSAE", "JumpSAE", "MpSAE", "RATopKSAE", "RAJumpSAE", "BatchTopKSAE")


def _module_state(obj: PickledObject, prefix: str = "") -> dict:
    """A pickled module's parameters and persistent buffers, keyed as its ``state_dict()`` would be."""
    state = obj.state if isinstance(obj.state, dict) else {}
    skip = state.get("_non_persistent_buffers_set") or set()
    out = {prefix + k: v for k, v in (state.get("_parameters") or {}).items() if v is not None}
    out |= {prefix + k: v for k, v in (state.get("_buffers") or {}).items() if v is not None and k not in skip}
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, PickledObject):
            out |= _module_state(child, f"{prefix}{name}.")
    return out


def _submodule(obj: PickledObject, path: str) -> PickledObject | None:
    for name in path.split("."):
        obj = ((obj.state or {}).get("_modules") or {}).get(name) if isinstance(obj, PickledObject) else None
    return obj


def _recorded(obj: PickledObject) -> dict:
    """The settings a whole pickled module records: its class and the attributes a state dict leaves out."""
    attrs = obj.state if isinstance(obj.state, dict) else {}
    out = {"class": obj.qualname.rsplit(".", 1)[-1]}
    for key in ("top_k", "k", "running_threshold"):
        if attrs.get(key) is not None:
            out[key] = attrs[key]
    dictionary = _submodule(obj, "dictionary")
    d_attrs = dictionary.state if dictionary is not None and isinstance(dictionary.state, dict) else {}
    if d_attrs.get("delta") is not None:
        out["delta"] = float(d_attrs["delta"])
    norm = d_attrs.get("normalization")
    if isinstance(norm, type) and issubclass(norm, PickledObject):
        out["normalization"] = norm.qualname.rsplit(".", 1)[-1].removeprefix("normalize_")
    bn = _submodule(obj, "encoder.final_block.1")
    if bn is not None and isinstance(bn.state, dict) and bn.state.get("eps") is not None:
        out["eps"] = float(bn.state["eps"])
    return out


def _class_of(sd: dict, options: dict, p: Path) -> str:
    """The overcomplete class a state dict was saved from: its keys, then ``class`` where they leave a choice."""
    if "Q" in sd:
        found = ("QSAE",)
    elif "dictionary.C" in sd:
        found = ("RAJumpSAE",) if "thresholds" in sd else ("RATopKSAE",)
    elif "thresholds" in sd:
        found = ("JumpSAE",)
    else:
        found = _FAMILIES["encoder" if any(k.startswith("encoder.") for k in sd) else "no encoder"]
    named = options.get("class")
    if named is not None and named not in found:
        raise ClipsaeError(f"{p}: its keys are those of an overcomplete {' or '.join(found)}, not a {named}")
    if named is None and len(found) > 1:
        raise ClipsaeError(f"{p}: an overcomplete {' or '.join(found)} state dict (they save the same keys): name it "
                           f"with --sae-options class=NAME")
    return named or found[0]


def _encoder(sd: dict, eps: float, p: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (n, d), b (n)) of the encoder's one linear map, its batch norm folded in."""
    keys = sorted(k for k in sd if k.startswith("encoder."))
    others = [k for k in keys if not k.startswith(_ENCODER)]
    if others:
        raise ClipsaeError(f"{p}: the encoder has layers before its last ({others[0]}, …): clipsae reads overcomplete's "
                           f"linear and mlp_bn_1 encoders, one linear map with an optional batch norm")
    W, b = sd[_ENCODER + "0.weight"].float(), sd[_ENCODER + "0.bias"].float()
    if _ENCODER + "1.weight" in sd:
        if _ENCODER + "1.running_mean" not in sd:
            raise ClipsaeError(f"{p}: the encoder ends in a LayerNorm (mlp_ln_1), which scales each row by its own "
                               f"statistics: no linear encoder equals it")
        g = sd[_ENCODER + "1.weight"].float() / (sd[_ENCODER + "1.running_var"].float() + eps).sqrt()
        W, b = W * g[:, None], (b - sd[_ENCODER + "1.running_mean"].float()) * g + sd[_ENCODER + "1.bias"].float()
    return W, b


def _dictionary(sd: dict, settings: dict, cls: str, p: Path) -> torch.Tensor:
    scale = torch.exp(sd["dictionary.multiplier"].float())
    if cls.startswith("RA"):
        if "delta" not in settings:
            raise ClipsaeError(f"{p}: an overcomplete {cls} state dict does not record delta, the bound on each atom's "
                               f"relaxation: pass --sae-options delta=D (overcomplete's default is 1.0)")
        W = torch.relu(sd["dictionary.W"].float())
        W = W / (W.sum(dim=-1, keepdim=True) + 1e-8)
        relax = sd["dictionary.Relax"].float()
        relax = relax * torch.clamp(settings["delta"] / relax.norm(dim=-1, keepdim=True), max=1)
        return (W @ sd["dictionary.C"].float() + relax) * scale
    norm = settings.get("normalization", "l2")
    if norm not in NORMALIZATIONS:
        raise ClipsaeError(f"{p}: dictionary normalization {norm!r} is not one of overcomplete's "
                           f"{', '.join(NORMALIZATIONS)}")
    return NORMALIZATIONS[norm](sd["dictionary._weights"].float()) * scale


def _size(settings: dict, key: str, cls: str, p: Path, default_note: str = "") -> int:
    if key not in settings:
        raise ClipsaeError(f"{p}: an overcomplete {cls} state dict does not record {key}: pass --sae-options "
                           f"{key}=K{default_note}")
    return int(settings[key])


def build(sd: dict, settings: dict, p: Path) -> SparseAutoencoder:
    """The SAE a state dict and its settings (``class`` included) describe."""
    cls = settings["class"]
    if cls in _REFUSED and not (cls == "BatchTopKSAE" and "running_threshold" in settings):
        raise ClipsaeError(f"{p}: an overcomplete {cls} is not read: {_REFUSED[cls]}")
    if cls not in _READ:
        raise ClipsaeError(f"{p}: overcomplete's {cls} is not read; clipsae reads {', '.join(_READ[:-1])} and a whole "
                           f"pickled BatchTopKSAE")
    need = ["dictionary.multiplier"] + (["dictionary.W", "dictionary.C", "dictionary.Relax"] if cls.startswith("RA")
                                        else ["dictionary._weights"])
    if cls != "MpSAE":
        need += [_ENCODER + "0.weight", _ENCODER + "0.bias"]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ClipsaeError(f"{p}: an overcomplete {cls} needs {', '.join(missing)}, which the file lacks")
    D = _dictionary(sd, settings, cls, p)
    n, d = D.shape
    zeros = torch.zeros(d)
    cfg = {"format": "overcomplete", **{k: (v.item() if torch.is_tensor(v) else v) for k, v in settings.items()}}
    if cls == "MpSAE":
        k = _size(settings, "k", cls, p)
        return SparseAutoencoder("mp", D, torch.zeros(n), D, zeros, k=k, cfg=cfg, apply_b_dec_to_input=False)
    W, b = _encoder(sd, float(settings.get("eps", _BN_EPS)), p)
    if tuple(W.shape) != (n, d):
        raise ClipsaeError(f"{p}: the encoder is {tuple(W.shape)} and the dictionary {(n, d)}; they must match")
    common = dict(cfg=cfg, apply_b_dec_to_input=False)
    if cls == "SAE":
        return SparseAutoencoder("standard", W, b, D, zeros, **common)
    if cls in ("TopKSAE", "RATopKSAE"):
        k = _size(settings, "top_k", cls, p, f" (overcomplete's default, where none was given, is nb_concepts // 10 "
                                                f"= {max(n // 10, 1)})")
        return SparseAutoencoder("topk", W, b, D, zeros, k=k, **common)
    if cls == "BatchTopKSAE":
        threshold = torch.as_tensor(settings["running_threshold"]).float().expand(n)
    else:
        threshold = torch.exp(sd["thresholds"].float())
    # overcomplete keeps a code equal to its threshold, clipsae's JumpReLU one above it: one float apart.
    return SparseAutoencoder("jumprelu", W, b, D, zeros, threshold=threshold, **common)


def load(p: Path, device: str, **options) -> tuple[SparseAutoencoder, Path]:
    obj = torch_load(p, "cpu", inert=True)
    if isinstance(obj, PickledObject):
        if not obj.qualname.startswith("overcomplete."):
            raise ClipsaeError(f"{p} pickles a {obj.qualname}, not an overcomplete module")
        settings = _recorded(obj)
        clash = [k for k in options if k in settings and str(options[k]) != str(settings[k])]
        if clash:
            raise ClipsaeError(f"{p}: the pickled module records {clash[0]}={settings[clash[0]]}, and --sae-options "
                               f"says {options[clash[0]]}")
        sd, settings = _module_state(obj), {**options, **settings}
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
        settings = {**options, "class": _class_of(sd, options, p)}
    else:
        raise ClipsaeError(f"{p} is neither an overcomplete module nor its state dict")
    return build(sd, settings, p).to(device), p


def _detect(p: Path) -> bool:
    head = p.is_file() and pickle_head(p)
    return bool(head) and (b"overcomplete.sae" in head or b"dictionary._weights" in head or b"dictionary.Relax" in head)


FORMAT = SAEFormat(
    name="overcomplete",
    needs="a torch.save of an overcomplete SAE or of its state_dict() (dictionary._weights or dictionary.Relax)",
    detect=_detect,
    load=load,
    options=OPTIONS,
)
