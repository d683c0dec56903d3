"""Loading a vision tower and its preprocessing, and describing both for provenance.

Two sources: open_clip (``ViT-B-32``, ``ViT-B-16-SigLIP2``, ``hf-hub:org/repo``: both towers, the
vision one open_clip's own or a timm trunk) and timm alone (``timm:NAME``: DINOv2, DINOv3, any timm
model; no text tower, preprocessing from timm's data config).
"""

import difflib
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn
from torchvision import transforms as T

from clipsae.errors import ClipsaeError
from clipsae.pipeline.config import ModelConfig


@dataclass
class LoadedModel:
    visual: nn.Module
    preprocess: T.Compose
    identity: dict  # what a store's config must match (model, weights, preprocessing)
    provenance: dict  # versions and paths, informative only


TIMM_PREFIX = "timm:"


def _check_name(name: str) -> None:
    if name.startswith(TIMM_PREFIX):
        import timm

        bare = name.removeprefix(TIMM_PREFIX)
        if not timm.is_model(bare):
            close = difflib.get_close_matches(bare, timm.list_models(), n=5, cutoff=0.6)
            hint = f"; similar: {', '.join(close)}" if close else ""
            raise ClipsaeError(f"unknown timm model {bare!r} (timm.list_models() lists the names){hint}")
        return
    if name.startswith("hf-hub:") or name in open_clip.list_models():
        return
    close = [m for m in open_clip.list_models() if m.lower().startswith(name.lower()[:5])][:5]
    hint = f"; similar: {', '.join(close)}" if close else ""
    raise ClipsaeError(f"unknown model {name!r} (open_clip.list_models() lists the names){hint}")


def _preprocess_overrides(cfg: ModelConfig, checkpoint: Path | None) -> dict:
    """Preprocessing to apply instead of the architecture default, and where it came from."""
    over: dict = {}
    if cfg.preprocess_like:
        pcfg = open_clip.get_pretrained_cfg(cfg.name, cfg.preprocess_like)
        if not pcfg:
            raise ClipsaeError(f"--preprocess-like {cfg.preprocess_like!r} is not a pretrained tag of {cfg.name}")
        over = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pcfg}
    elif checkpoint is not None and (checkpoint.parent / "open_clip_config.json").is_file():
        # Hugging Face repos ship the preprocessing the checkpoint was trained with.
        pp = json.loads((checkpoint.parent / "open_clip_config.json").read_text()).get("preprocess_cfg", {})
        over = {k: pp[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pp}
    if cfg.image_mean:
        over["mean"] = cfg.image_mean
    if cfg.image_std:
        over["std"] = cfg.image_std
    return over


def describe_preprocess(preprocess: T.Compose) -> dict:
    """Size, interpolation, mean and std read off the transform actually applied."""
    out: dict = {"transforms": repr(preprocess)}
    for t in preprocess.transforms:
        if isinstance(t, T.Resize):
            out["resize"] = t.size
            out["interpolation"] = t.interpolation.value
        elif isinstance(t, T.CenterCrop):
            out["crop"] = list(t.size)
        elif isinstance(t, T.Normalize):
            out["mean"] = [float(x) for x in t.mean]
            out["std"] = [float(x) for x in t.std]
    return json.loads(json.dumps(out))


@dataclass
class LoadedClip:
    """The whole CLIP model (both towers) in eval mode, its tokenizer, and the vision side as load_model gives it.

    A timm model alone has no text tower: ``model`` is then the vision tower and ``tokenizer`` None."""

    model: nn.Module
    tokenizer: object
    vision: LoadedModel

    @property
    def has_text(self) -> bool:
        return self.tokenizer is not None

    def require_text(self, what: str) -> None:
        """Refuse, in one line, ``what`` (an analysis that needs the text tower) where there is none."""
        if not self.has_text:
            raise ClipsaeError(f"{what} needs CLIP's text tower, and {self.vision.identity['model']} (a timm model "
                               f"alone) has none")


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Build the model's vision tower in eval mode with its preprocessing.

    Pretrained weights are fetched by open_clip; a failed fetch raises ClipsaeError with
    the reason instead of silently falling back to random weights.
    """
    model, loaded = _create(cfg)
    del model
    return loaded


# The last whole model built, by what decides it (clip_key): the analyses a process runs on one store (the
# demo, a comparison's splices, the explorer) build it once. One is held at a time; its holders share it, and
# none changes its weights (they read it under forward hooks they remove, and move it to their device). The
# explorer's threads may ask at once: the lock lets one build.
_LAST_CLIP: dict[tuple, LoadedClip] = {}
_LAST_CLIP_LOCK = threading.Lock()


def load_clip(cfg: ModelConfig) -> LoadedClip:
    """Build the whole model (image and text towers) and its tokenizer, with the weights ``cfg`` names; the same
    object again while ``clip_key(cfg)`` is the last one's."""
    key = clip_key(cfg)
    with _LAST_CLIP_LOCK:
        clip = _LAST_CLIP.get(key)
        if clip is None:
            _LAST_CLIP.clear()  # the old model freed before the new one is built
            model, loaded = _create(cfg)
            if cfg.name.startswith(TIMM_PREFIX):
                clip = LoadedClip(model.eval(), None, loaded)
            else:
                name = cfg.pretrained if cfg.pretrained and cfg.pretrained.startswith("hf-hub:") else cfg.name
                clip = LoadedClip(model.eval(), open_clip.get_tokenizer(name), loaded)
            _LAST_CLIP[key] = clip
        return clip


def clip_key(cfg: ModelConfig) -> tuple:
    """What decides the model ``load_clip(cfg)`` builds: the config, and a local checkpoint's path, size and
    modification time (a file rewritten in place is another model)."""
    file = Path(cfg.pretrained) if cfg.pretrained else None
    if file is not None and file.is_file():
        st = file.stat()
        return repr(cfg), str(file.resolve()), st.st_size, st.st_mtime_ns
    return (repr(cfg),)


def _create(cfg: ModelConfig) -> tuple[nn.Module, LoadedModel]:
    """The open_clip model and its vision side with identity and provenance (see :func:`load_model`)."""
    _check_name(cfg.name)
    if cfg.name.startswith(TIMM_PREFIX):
        return _create_timm(cfg)
    pretrained, checkpoint, weights_id = cfg.pretrained, None, None
    if pretrained is None:
        weights_id = f"random-init(seed={cfg.init_seed})"
    elif Path(pretrained).is_file():
        checkpoint = Path(pretrained).resolve()
        with open(checkpoint, "rb") as fh:
            weights_id = f"file:sha256:{hashlib.file_digest(fh, 'sha256').hexdigest()}"
    elif pretrained.startswith("hf-hub:"):
        weights_id = pretrained
    else:
        tags = open_clip.list_pretrained_tags_by_model(cfg.name)
        if pretrained not in tags and not cfg.name.startswith("hf-hub:"):
            if "/" in pretrained or pretrained.endswith((".pt", ".bin", ".safetensors", ".pth")):
                raise ClipsaeError(f"checkpoint file {pretrained} does not exist")
            known = ", ".join(tags) if tags else "none"
            raise ClipsaeError(f"{pretrained!r} is not a pretrained tag of {cfg.name} (known: {known})")
        weights_id = pretrained
    over = _preprocess_overrides(cfg, checkpoint)
    torch.manual_seed(cfg.init_seed)
    # hf-hub:org/repo as weights means: that repo's config and checkpoint, which is how open_clip loads it.
    name, tag = (pretrained, None) if pretrained and pretrained.startswith("hf-hub:") else (cfg.name, pretrained)
    # open_clip and huggingface_hub log each retry and failure; our single error line says it all.
    for logger in ("", "huggingface_hub"):
        logging.getLogger(logger).setLevel(logging.CRITICAL)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=tag,
            image_mean=over.get("mean"),
            image_std=over.get("std"),
            image_interpolation=over.get("interpolation"),
            image_resize_mode=over.get("resize_mode"),
        )
    except ClipsaeError:
        raise
    except Exception as exc:
        what = f"checkpoint {checkpoint}" if checkpoint else f"pretrained weights {pretrained!r}"
        raise ClipsaeError(f"could not load {what} for {cfg.name}: {type(exc).__name__}: {exc}") from exc
    versions = {"open_clip_version": open_clip.__version__}
    return model, _described(model.visual.eval(), preprocess, cfg, weights_id, checkpoint, versions)


def _described(visual: nn.Module, preprocess, cfg: ModelConfig, weights_id: str, checkpoint: Path | None,
               versions: dict) -> LoadedModel:
    """The tower with the identity a store must match and the provenance it keeps."""
    identity = {
        "model": cfg.name,
        "pretrained": weights_id,
        "preprocess": {k: v for k, v in describe_preprocess(preprocess).items() if k != "transforms"},
    }
    provenance = {
        "pretrained_arg": cfg.pretrained,
        "checkpoint_path": str(checkpoint) if checkpoint else None,
        "preprocess_transforms": repr(preprocess),
        **versions,
        "torch_version": torch.__version__,
    }
    return LoadedModel(visual, preprocess, identity, provenance)


def _first_mismatch(model: nn.Module, state: dict) -> str | None:
    """The first key where a state dict does not fit ``model``: missing, unexpected, or of another shape."""
    own = model.state_dict()
    for key, value in own.items():
        if key not in state:
            return f"{key} is missing from the file"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"{key} has shape {tuple(state[key].shape)} in the file, {tuple(value.shape)} in the model"
    extra = next((k for k in state if k not in own), None)
    return f"{extra} is in the file but not in the model" if extra else None


def _create_timm(cfg: ModelConfig) -> tuple[nn.Module, LoadedModel]:
    """A timm model alone (``timm:NAME``) as a vision tower, with no classifier, and timm's preprocessing."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from clipsae.pipeline.towers.timm_common import TimmAlone

    bare = cfg.name.removeprefix(TIMM_PREFIX)
    pretrained, checkpoint = cfg.pretrained, None
    torch.manual_seed(cfg.init_seed)
    if pretrained is None:
        weights_id = f"random-init(seed={cfg.init_seed})"
        trunk = timm.create_model(bare, pretrained=False, num_classes=0)
    elif Path(pretrained).is_file():
        checkpoint = Path(pretrained).resolve()
        with open(checkpoint, "rb") as fh:
            weights_id = f"file:sha256:{hashlib.file_digest(fh, 'sha256').hexdigest()}"
        trunk = timm.create_model(bare, pretrained=False, num_classes=0)
        try:
            state = timm.models.load_state_dict(str(checkpoint))
        except Exception as exc:
            raise ClipsaeError(f"could not read checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from exc
        mismatch = _first_mismatch(trunk, state)
        if mismatch:
            raise ClipsaeError(f"checkpoint {checkpoint} is not a state dict of timm model {bare}: {mismatch}")
        trunk.load_state_dict(state)
    else:
        if "/" in pretrained and not pretrained.startswith("hf-hub:") or pretrained.endswith(
                (".pt", ".bin", ".safetensors", ".pth")):
            raise ClipsaeError(f"checkpoint file {pretrained} does not exist")
        source = pretrained if pretrained.startswith("hf-hub:") else f"{bare}.{pretrained}"
        if not pretrained.startswith("hf-hub:") and source not in timm.list_pretrained(f"{bare}.*"):
            known = ", ".join(t.partition(".")[2] for t in timm.list_pretrained(f"{bare}.*")) or "none"
            raise ClipsaeError(f"{pretrained!r} is not a pretrained tag of timm model {bare} (known: {known})")
        for logger in ("", "huggingface_hub", "timm"):
            logging.getLogger(logger).setLevel(logging.CRITICAL)
        try:
            trunk = timm.create_model(source, pretrained=True, num_classes=0)
        except Exception as exc:
            raise ClipsaeError(f"could not load pretrained weights {pretrained!r} for timm model {bare}: "
                               f"{type(exc).__name__}: {exc}") from exc
        weights_id = pretrained
    data = resolve_data_config({}, model=trunk)
    if cfg.preprocess_like:
        raise ClipsaeError("--preprocess-like names open_clip tags; a timm model takes its preprocessing from its "
                           "data config (override with --image-mean and --image-std)")
    data.update({k: tuple(v) for k, v in _preprocess_overrides(cfg, None).items() if k in ("mean", "std")})
    preprocess = create_transform(**data, is_training=False)
    visual = TimmAlone(trunk.eval(), tuple(data["input_size"][1:])).eval()
    return visual, _described(visual, preprocess, cfg, weights_id, checkpoint, {"timm_version": timm.__version__})


def store_model_config(config: dict, provenance: dict, pretrained: str | None = None,
                       model: str | None = None) -> ModelConfig:
    """The ModelConfig that loads the model and weights a store was extracted with (``model`` and
    ``pretrained``, the `--model` and `--pretrained` options, override them).

    Reverses what :func:`load_model` recorded: ``random-init(seed=N)``, ``file:sha256:…`` (the
    checkpoint's recorded path, which must still hold those bytes), or an open_clip tag / hf-hub id.
    """
    name = model if model is not None else str(config.get("model", ""))
    if pretrained is not None:
        return ModelConfig(name, pretrained)
    weights = str(config.get("pretrained", ""))
    seeded = re.fullmatch(r"random-init\(seed=(-?\d+)\)", weights)
    if seeded:
        return ModelConfig(name, None, init_seed=int(seeded.group(1)))
    if weights.startswith("file:sha256:"):
        path = provenance.get("checkpoint_path")
        if not path or not Path(path).is_file():
            raise ClipsaeError(f"the store was extracted from checkpoint {path or '(path not recorded)'}, which is not "
                               f"there now; pass --pretrained PATH")
        with open(path, "rb") as fh:
            if f"file:sha256:{hashlib.file_digest(fh, 'sha256').hexdigest()}" != weights:
                raise ClipsaeError(f"{path} is no longer the checkpoint the store was extracted with (its sha256 "
                                   f"differs); pass --pretrained PATH")
        return ModelConfig(name, path)
    if not name or not weights:
        raise ClipsaeError("the store does not record which model made it; pass --model and --pretrained")
    return ModelConfig(name, weights)
