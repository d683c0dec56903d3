"""Naming features through CLIP's text tower (Discover-then-Name, MSAE), two ways.

For each word w of a vocabulary, t_w is the unit text embedding of "a photo of a {w}.".
- ``decoder``: cos(J·W_dec[f], t_w), with J the map of the codes' hook into the joint space
  (see ``joint_space``: exact for embed, attnpool and ln_post; an approximation for resid.L).
- ``top-images``: cos(m_f, t_w), with m_f = Σ_i v_i ê_i / Σ_i v_i over the feature's top images i,
  v_i the feature's value on image i and ê_i the image's unit embedding. Fry found naming a late
  residual layer's directions through the text tower unreliable; this way needs no map at all.
names.csv holds, for every live feature and each method, its best words by cosine.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from clipsae.analysis.class_names import read_class_names
from clipsae.analysis.features.top_images import TopImages, check_k, top_images
from clipsae.analysis.images import iter_image_batches
from clipsae.analysis.model.joint_space import directions_to_joint, text_embeddings
from clipsae.analysis.output import NAMES_FILE, write_csv
from clipsae.device import resolve_device
from clipsae.errors import ClipsaeError
from clipsae.store.reader import ActivationStore

NAMES_COLUMNS = ("feature", "rank", "word", "score", "method")
# Hooks from which a store's image embeddings follow exactly (ln_post through proj).
EMBEDDING_HOOKS = ("embed", "attnpool", "ln_post")


@dataclass(frozen=True)
class Names:
    """Per feature (rows), the indices of its best words and their cosines, best first."""

    words_FR: torch.Tensor
    scores_FR: torch.Tensor


def default_vocabulary() -> list[str]:
    """The 1,000 ImageNet class names as open_clip ships them."""
    from open_clip import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def read_vocabulary(path: Path | None) -> list[str]:
    """``path`` as one word per line (or a JSON list / object of names), else the default; duplicates dropped."""
    words = list(read_class_names(path).values()) if path is not None else default_vocabulary()
    words = list(dict.fromkeys(w.strip() for w in words if w.strip()))
    if not words:
        raise ClipsaeError(f"{path} holds no words")
    return words


def best_words(x_FE: torch.Tensor, text_WE: torch.Tensor, n: int, block: int = 4096) -> Names:
    """The ``n`` words of largest cosine with each row of ``x_FE`` (rows of zero norm score 0)."""
    x = torch.nn.functional.normalize(x_FE.float(), dim=1)
    n = min(n, text_WE.shape[0])
    idx, val = [], []
    for s in range(0, len(x), block):
        top = (x[s:s + block] @ text_WE.T).topk(n, dim=1)
        idx.append(top.indices)
        val.append(top.values)
    return Names(torch.cat(idx), torch.cat(val))


def weighted_mean_embeddings(top: TopImages, emb_of: dict[int, torch.Tensor], dim: int) -> torch.Tensor:
    """(features, dim): Σ v_i ê_i / Σ v_i over each feature's top images (zeros where it has none)."""
    out = torch.zeros(top.images_FK.shape[0], dim)
    for f in range(top.images_FK.shape[0]):
        imgs, vals = top.images_FK[f], top.values_FK[f]
        used = imgs >= 0
        if used.any():
            e = torch.stack([emb_of[int(i)] for i in imgs[used]])
            w = torch.from_numpy(vals[used].astype(np.float32))
            out[f] = (w[:, None] * e).sum(0) / w.sum()
    return out


@torch.no_grad()
def image_embeddings(store: ActivationStore, images: np.ndarray, clip, shards: Path | None, device: str,
                     batch: int, progress: bool) -> dict[int, torch.Tensor]:
    """Unit image embeddings of ``images``: from the store's embed, attnpool or ln_post hook when it has
    one, else computed by the model from the images in the tars."""
    images = np.unique(images)
    stored = next((h for h in EMBEDDING_HOOKS if h in store.hooks), None)
    if stored is not None:
        x = torch.from_numpy(store.read(stored, images)[:, 0].astype(np.float32))
        x = directions_to_joint(x, clip.vision.visual, stored)
        return dict(zip(images.tolist(), torch.nn.functional.normalize(x, dim=1)))
    out: dict[int, torch.Tensor] = {}
    bar = tqdm(total=len(images), desc="image embeddings", unit="img", disable=not progress)
    for idx, x in iter_image_batches(store, images, clip.vision.preprocess, batch, shards):
        e = torch.nn.functional.normalize(clip.model.encode_image(x.to(device)).float(), dim=1).cpu()
        out.update(zip(idx.tolist(), e))
        bar.update(len(idx))
    bar.close()
    return out


def run_name_features(t, vocab: Path | None = None, n_words: int = 5, k: int = 12, by: str = "max",
                      sae: Path | None = None, model: str | None = None, pretrained: str | None = None,
                      shards: Path | None = None, device: str = "auto", batch: int = 64,
                      progress: bool = True) -> list[str]:
    """names.csv: each live feature's best words by the decoder direction and by its top images."""
    from clipsae.analysis.codes_sae import codes_sae
    from clipsae.pipeline.model import load_clip, store_model_config

    check_k(k)
    if n_words < 1:
        raise ClipsaeError(f"--words must be at least 1, not {n_words}")
    from clipsae.analysis.class_names import class_names
    from clipsae.analysis.random_weights import WARNING as RANDOM_WEIGHTS_WARNING
    from clipsae.analysis.random_weights import model_has_random_weights

    # Without --vocab, the store's own class names (classes.json beside its tars) are the words a
    # researcher expects first; ImageNet's only where the store has none.
    own = class_names(t.store, None, shards) if vocab is None else {}
    words = list(dict.fromkeys(w for w in own.values() if w.strip())) if own else read_vocabulary(vocab)
    vocab_note = "the store's class names (classes.json beside its tars)" if own else (
        f"{vocab}" if vocab is not None else "the 1,000 ImageNet class names")
    model_sae = codes_sae(t.codes, sae)
    cfg = store_model_config(t.store.config, t.store.provenance, pretrained, model)
    dev = str(resolve_device(device))
    clip = load_clip(cfg)
    clip.require_text("name-features")
    clip.model.to(dev)
    text = text_embeddings(clip.model, clip.tokenizer, words, device=dev)
    joint = directions_to_joint(model_sae.W_dec, clip.vision.visual, t.codes.hook)
    if joint.shape[1] != text.shape[1]:
        raise ClipsaeError(f"{t.codes.hook} directions land in {joint.shape[1]} dimensions but {cfg.name}'s text "
                           f"embeddings have {text.shape[1]}; is this the store's model?")
    top = top_images(t.codes, k, by)
    live = np.nonzero(top.filled_F() > 0)[0]
    by_decoder = best_words(joint[live], text, n_words)
    emb = image_embeddings(t.store, top.images_FK[live][top.images_FK[live] >= 0], clip, shards, dev, batch, progress)
    live_top = TopImages(top.images_FK[live], top.values_FK[live], top.tokens_FK[live])
    by_images = best_words(weighted_mean_embeddings(live_top, emb, text.shape[1]), text, n_words)
    rows = ((int(f), r + 1, words[int(names.words_FR[i, r])], float(names.scores_FR[i, r]), method)
            for method, names in (("decoder", by_decoder), ("top-images", by_images))
            for i, f in enumerate(live) for r in range(names.words_FR.shape[1]))
    path = write_csv(t.out / NAMES_FILE, NAMES_COLUMNS, rows)
    exact = t.codes.hook in ("embed", "attnpool", "ln_post")
    agree = float((by_decoder.words_FR[:, 0] == by_images.words_FR[:, 0]).float().mean()) if len(live) else 0.0
    lines = [f"{t.title}: {len(words)} words ('{words[0]}', …) from {vocab_note} through {cfg.name}'s text tower "
             f"({clip.vision.identity['pretrained']}); {len(live)} live features named",
             f"decoder directions carried into the joint space {'exactly' if exact else 'approximately (resid: ln_post scale and proj, later blocks ignored)'}; "
             f"top-images: value-weighted mean embedding of each feature's top {k}; the two agree on the best word "
             f"for {agree:.1%} of features"]
    for i, f in enumerate(live[:3]):
        lines.append(f"feature {f}: decoder {words[int(by_decoder.words_FR[i, 0])]} ({float(by_decoder.scores_FR[i, 0]):.3f}), "
                     f"top-images {words[int(by_images.words_FR[i, 0])]} ({float(by_images.scores_FR[i, 0]):.3f})")
    if model_has_random_weights(clip):
        lines.append(f"warning: {RANDOM_WEIGHTS_WARNING}")
    return lines + [f"wrote {path}"]
