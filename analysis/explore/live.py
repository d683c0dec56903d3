"""What the explorer computes through the model, loaded on first need (browsing cached codes needs none):
an image's codes as encode would cache them, a text's features, and steering.

An image goes through what made the codes: the store's model and preprocessing, the codes' hook and
tokens, the codes' SAE, and encode's pooling (analysis/pooling.py). Steering is ``analyze intervene``
on one image: at the hook, x + (x̂′ − x̂) with the SAE's error term kept, then zero-shot class
probabilities softmax_c(s · cos(e, t_c)) before and after, t_c the text embedding of
"a photo of a {class}." or of a prompt as typed.
"""

import gc
import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from clipsae.analysis.edits import Edit
from clipsae.memory import release_freed_memory
from clipsae.store.codes import Codes


@dataclass(frozen=True)
class TokenCodes:
    """One image's codes as the cache keeps them: per encoded token its ``width`` largest latents
    (−1 for none) and values, and per latent its maximum over all the image's tokens."""

    latents_TK: np.ndarray
    values_TK: np.ndarray
    image_latents: np.ndarray
    image_max: np.ndarray


@dataclass(frozen=True)
class Steered:
    """Zero-shot probabilities before and after an edit, per class (in ``classes``' order), and cos(e, e′)."""

    classes: list[str]
    before: np.ndarray
    after: np.ndarray
    cosine: float


class LiveModel:
    """The CLIP model and SAE behind one set of codes, loaded once on first use, on ``device``.
    Requests share it; one lock for every LiveModel lets one forward run at a time (the CPU's cores are one pool
    anyway): the codes of one store share one model object (pipeline.model.load_clip), and a steer's forward hooks
    on it must not reach another's forward."""

    _lock = threading.Lock()

    def __init__(self, codes: Codes, device: str):
        self.codes, self.device = codes, device
        self._loaded = None
        self._joint = None  # the decoder's directions in the joint space, unit length, made on the first text search

    def _load(self):
        if self._loaded is None:
            from clipsae.analysis.codes_sae import codes_sae
            from clipsae.analysis.model import intervene as iv
            from clipsae.analysis.model.query import ModelChoice, hooked_forward, store_clip

            sae = codes_sae(self.codes, None, device=self.device)
            clip = store_clip(self.codes, ModelChoice(device=self.device))
            visual = clip.vision.visual
            hooked = hooked_forward(self.codes, visual)
            positions = iv.edited_positions(visual, self.codes.store, self.codes, "all")
            self._loaded = (sae, clip, hooked, positions)
            # The model's construction (initial weights, then the checkpoint's) freed as much as it keeps.
            gc.collect()
            release_freed_memory()
        return self._loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def preload(self) -> threading.Thread:
        """Load the model and SAE on a thread of their own; a failure is left for the first request that needs
        them to report (browsing goes on without them)."""
        def load():
            try:
                with self._lock:
                    self._load()
            except Exception:  # noqa: BLE001 (the request that needs the model says why, in one line)
                pass

        thread = threading.Thread(target=load, name=f"preload {self.codes.name}", daemon=True)
        thread.start()
        return thread

    def _pixels(self, clip, image: Image.Image) -> torch.Tensor:
        return clip.vision.preprocess(image).unsqueeze(0).to(self.device)

    @torch.no_grad()
    def token_codes(self, image: Image.Image) -> TokenCodes:
        """The image's codes, as ``clipsae encode`` would have cached them had it been in the store."""
        from clipsae.analysis.model.query import encode_pixels

        with self._lock:
            sae, clip, hooked, _ = self._load()
            block = encode_pixels(self.codes, sae, hooked, self._pixels(clip, image))
        keep = block.image_max_E > 0  # as Codes.image_values keeps them (a signed SAE's codes may be negative)
        return TokenCodes(block.token_latents_RK, block.token_values_RK, block.image_latents_E[keep].astype(np.int64),
                          block.image_max_E[keep])

    @torch.no_grad()
    def text_scores(self, text: str) -> np.ndarray:
        """cos(J·W_dec[f], t) for every feature, as ``analyze search --text`` scores them."""
        from clipsae.analysis.model.query import joint_directions, text_scores

        with self._lock:
            sae, clip, _, _ = self._load()
            clip.require_text("search by text")
            if self._joint is None:
                self._joint = joint_directions(sae, clip.vision.visual, self.codes.hook)
            return text_scores(clip, self._joint, self.codes.hook, text, self.device)

    @torch.no_grad()
    def steer(self, image: Image.Image, edits: tuple[Edit, ...], classes: tuple[str, ...], prompt: str) -> Steered:
        """Zero-shot probabilities over ``classes`` (each put in ``prompt``) before and after ``edits``."""
        from clipsae.analysis.model import intervene as iv
        from clipsae.analysis.model.intervene_run import zero_shot_probabilities
        from clipsae.analysis.model.joint_space import text_embeddings

        with self._lock:
            sae, clip, _, positions = self._load()
            visual = clip.vision.visual
            x = self._pixels(clip, image)
            original, edited = iv.image_embeddings(visual, self.codes.hook, positions, sae, iv.Change(edits, "all"), x)
            text = text_embeddings(clip.model, clip.tokenizer, list(classes), prompt=prompt, device=self.device)
            scale = float(clip.model.logit_scale.detach().exp())
        before = zero_shot_probabilities(original.float().cpu(), text, scale)[0].double().numpy()
        after = zero_shot_probabilities(edited.float().cpu(), text, scale)[0].double().numpy()
        cos = float(torch.nn.functional.cosine_similarity(original.float(), edited.float(), dim=1)[0])
        return Steered(list(classes), before, after, cos)
