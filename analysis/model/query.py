"""Search queries that need the model: an image file's per-image code vector, and a text's features.

An image file goes through what made the codes: the store's model and preprocessing, its hook and
tokens, the codes' SAE (with the input normalisation encode recorded), and the same pooling into
per-image values as encode caches (analysis/pooling.py), so a file identical to a stored image gets
that image's vector. A text is scored against every feature as ``analyze name-features`` scores
its decoder direction: cos(J·W_dec[f], t), J the hook's map into the joint space.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from clipsae.analysis.codes_sae import codes_sae
from clipsae.analysis.model.joint_space import directions_to_joint, text_embeddings
from clipsae.analysis.pooling import pool_batch
from clipsae.errors import ClipsaeError
from clipsae.store.codes import Codes, CodesBlock


@dataclass(frozen=True)
class ModelChoice:
    """The SAE and weights a model-side query uses: defaults are the codes' SAE and the store's model."""

    sae: Path | None = None
    model: str | None = None
    pretrained: str | None = None
    device: str = "cpu"


def store_clip(codes: Codes, choice: ModelChoice):
    """The whole CLIP model the codes' store was extracted with (or the one ``choice`` names), on its device."""
    from clipsae.pipeline.model import load_clip, store_model_config

    cfg = store_model_config(codes.store.config, codes.store.provenance, choice.pretrained, choice.model)
    clip = load_clip(cfg)
    clip.model.to(choice.device)
    return clip


def read_image(path: Path) -> Image.Image:
    """An image file as RGB; one line where it is missing or not an image."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise ClipsaeError(f"--image {path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ClipsaeError(f"--image {path} is not an image PIL can read ({exc})") from None


def hooked_forward(codes: Codes, visual):
    """The forward of ``visual`` that returns the activations at the codes' hook, with the store's tokens."""
    from clipsae.pipeline.hooks import HookedForward, resolve_hooks

    tokens = str(codes.store.config.get("tokens", "all"))
    return HookedForward(visual, resolve_hooks(visual, [codes.hook], tokens), tokens)


@torch.no_grad()
def encode_pixels(codes: Codes, sae, hooked, pixels_NCHW: torch.Tensor) -> CodesBlock:
    """Preprocessed images' codes in the cached form (:func:`pool_batch`), as ``clipsae encode`` makes them:
    the codes' token positions at their hook, through their SAE."""
    positions = torch.as_tensor(codes.token_positions)
    acts_NTD = hooked(pixels_NCHW)[codes.hook][:, positions.to(pixels_NCHW.device)]
    rows = acts_NTD.reshape(-1, acts_NTD.shape[-1]).float()
    block, _ = pool_batch(sae.encode_sparse(rows), len(pixels_NCHW), positions.to(rows.device), sae.d_sae,
                          codes.width, 0 if codes.has_cls else None)
    return block


@torch.no_grad()
def image_vectors(codes: Codes, images: list[Image.Image], by: str, choice: ModelChoice) -> np.ndarray:
    """(images, latents): each image's per-image values by ``by``, as encode would have cached them."""
    sae = codes_sae(codes, choice.sae, device=choice.device)
    clip = store_clip(codes, choice)
    x = torch.stack([clip.vision.preprocess(im) for im in images]).to(choice.device)
    block = encode_pixels(codes, sae, hooked_forward(codes, clip.vision.visual), x)
    value_E = {"max": block.image_max_E, "mean": block.image_sum_E / np.float32(codes.n_positions),
               "cls": block.image_cls_E}[by]
    out = np.zeros((len(images), sae.d_sae))
    image_E = np.repeat(np.arange(len(images)), block.image_counts_I)
    keep = value_E > 0
    out[image_E[keep], block.image_latents_E[keep]] = value_E[keep]
    return out


@torch.no_grad()
def joint_directions(sae, visual, hook: str) -> torch.Tensor:
    """(features, joint dims) unit vectors: each feature's decoder direction J·W_dec[f] in the joint space."""
    return torch.nn.functional.normalize(directions_to_joint(sae.W_dec, visual, hook).cpu(), dim=1)


@torch.no_grad()
def text_scores(clip, joint_FJ: torch.Tensor, hook: str, text: str, device: str) -> np.ndarray:
    """cos(J·W_dec[f], t) for every feature f, from :func:`joint_directions`, t the unit embedding of ``text`` as typed."""
    t = text_embeddings(clip.model, clip.tokenizer, [text], prompt="{}", device=device)
    if joint_FJ.shape[1] != t.shape[1]:
        raise ClipsaeError(f"{hook} directions land in {joint_FJ.shape[1]} dimensions but the text embeddings "
                           f"have {t.shape[1]}; is this the store's model?")
    return (joint_FJ @ t[0]).double().numpy()


def text_feature_scores(codes: Codes, text: str, choice: ModelChoice) -> np.ndarray:
    """cos(J·W_dec[f], t) for every feature f, t the unit text embedding of ``text`` as typed."""
    sae = codes_sae(codes, choice.sae, device=choice.device)
    clip = store_clip(codes, choice)
    clip.require_text("search by text")
    return text_scores(clip, joint_directions(sae, clip.vision.visual, codes.hook), codes.hook, text, choice.device)


def model_has_random_weights_note(codes: Codes) -> str | None:
    """A warning line when the store's model was not pretrained: its text tower means nothing."""
    from clipsae.analysis.random_weights import WARNING, store_has_random_weights

    return f"warning: {WARNING}" if store_has_random_weights(codes.store) else None
