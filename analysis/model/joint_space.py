"""Directions of a hook carried into CLIP's joint image–text space, and text embeddings of words.

- ``embed`` and ``attnpool`` (ResNet) are the image embedding: a direction is its own image.
- ``ln_post`` (open_clip ViT, the pooled token after the final LayerNorm): d ↦ d·proj, exact.
- ``pooled`` (timm towers): through the trunk's classifier and open_clip's head, exact where both
  are linear (SigLIP, EVA-02); a tower whose head is an MLP has no such map.
- ``resid.L`` (open_clip ViT): d ↦ ((d − mean(d)) ⊙ γ)·proj, with γ the final LayerNorm's weight. This
  is an approximation: it keeps LayerNorm's centring and scale per dimension but drops its division by
  the token's norm (which scales, never turns, a direction), its bias, and, for L before the last
  block, every block after L.
Each tower states its maps (pipeline/towers). Cosines with text embeddings do not depend on the
directions' lengths, so none is rescaled.
"""

import threading
import weakref
from collections import OrderedDict

import torch
from torch import nn

from clipsae.errors import ClipsaeError
from clipsae.pipeline.towers import tower_for

PROMPT = "a photo of a {}."

# The last text embeddings made, by model, prompt and words: the analyses of one process ask for the same class
# names again (each splice's zero-shot, intervene). The model is held weakly, and checked to be the one that
# made them. The explorer's threads may ask at once: the lock guards the dictionary, not the text tower.
TEXT_KEPT = 8
_TEXT: OrderedDict[tuple, tuple[weakref.ref, torch.Tensor]] = OrderedDict()
_TEXT_LOCK = threading.Lock()


def directions_to_joint(d_FD: torch.Tensor, visual: nn.Module, hook: str) -> torch.Tensor:
    """(features, embedding dims): each row of ``d_FD`` (directions at ``hook``) in the joint space."""
    to_joint = tower_for(visual).joint_map(hook)
    if to_joint is None:
        raise ClipsaeError(f"hook {hook} of this tower has no map into the joint space; name-features reads embed, "
                           f"attnpool, pooled (timm towers with a linear head), ln_post and resid.L (open_clip ViTs) codes")
    return to_joint(d_FD.detach().float())


def points_to_joint(x_ND: torch.Tensor, visual: nn.Module, hook: str) -> torch.Tensor:
    """(vectors, embedding dims): pooled vectors at ``hook`` as the model carries them to its image
    embedding, biases included (where :func:`directions_to_joint` maps directions)."""
    to_joint = tower_for(visual).point_map(hook)
    if to_joint is None:
        raise ClipsaeError(f"hook {hook} of this tower has no map to the image embedding; splice and intervene read "
                           f"embed, attnpool, pooled and ln_post codes, or the residual stream")
    return to_joint(x_ND.float())


@torch.no_grad()
def text_embeddings(model: nn.Module, tokenizer, words: list[str], prompt: str = PROMPT,
                    batch: int = 256, device: str = "cpu") -> torch.Tensor:
    """(words, embedding dims) unit text embeddings of ``prompt`` filled with each word; one line where the
    model has no text tower (``tokenizer`` None: a timm model alone)."""
    if tokenizer is None:
        raise ClipsaeError("text prompts and class names need CLIP's text tower, and this store's model is a timm "
                           "model alone (timm:NAME), which has none")
    key = (id(model), prompt, tuple(words), str(device))
    with _TEXT_LOCK:
        held = _TEXT.get(key)
        if held is not None and held[0]() is model:
            _TEXT.move_to_end(key)
            return held[1].clone()
    out = []
    for s in range(0, len(words), batch):
        tokens = tokenizer([prompt.format(w) for w in words[s:s + batch]]).to(device)
        out.append(torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=1).cpu())
    text = torch.cat(out) if out else torch.empty(0, 0)
    with _TEXT_LOCK:
        _TEXT[key] = (weakref.ref(model), text)
        while len(_TEXT) > TEXT_KEPT:
            _TEXT.popitem(last=False)
    return text.clone()
