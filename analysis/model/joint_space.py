"""Directions of a hook carried into CLIP's joint image–text space, and text embeddings of words.

- ``embed`` (ViT) and ``attnpool`` (ResNet) are the image embedding: a direction is its own image.
- ``ln_post`` (the pooled token after the final LayerNorm): d ↦ d·proj, exact.
- ``resid.L`` (ViT): d ↦ ((d − mean(d)) ⊙ γ)·proj, with γ the final LayerNorm's weight. This is an
  approximation: it keeps LayerNorm's centring and scale per dimension but drops its division by
  the token's norm (which scales, never turns, a direction), its bias, and, for L before the last
  block, every block after L.
Cosines with text embeddings do not depend on the directions' lengths, so none is rescaled.
"""

import torch
from torch import nn

from clipsae.errors import ClipsaeError
from clipsae.pipeline.hooks import tower_kind

PROMPT = "a photo of a {}."


def directions_to_joint(d_FD: torch.Tensor, visual: nn.Module, hook: str) -> torch.Tensor:
    """(features, embedding dims): each row of ``d_FD`` (directions at ``hook``) in the joint space."""
    d = d_FD.detach().float()
    if hook in ("embed", "attnpool"):
        return d
    if tower_kind(visual) != "vit" or not (hook == "ln_post" or hook.startswith("resid.")):
        raise ClipsaeError(f"hook {hook} has no map into the joint space; name-features reads embed, attnpool, "
                           f"ln_post and resid.L codes")
    proj = visual.proj.detach().float() if visual.proj is not None else None
    if hook.startswith("resid."):
        d = (d - d.mean(1, keepdim=True)) * visual.ln_post.weight.detach().float()
    return d @ proj if proj is not None else d


@torch.no_grad()
def text_embeddings(model: nn.Module, tokenizer, words: list[str], prompt: str = PROMPT,
                    batch: int = 256, device: str = "cpu") -> torch.Tensor:
    """(words, embedding dims) unit text embeddings of ``prompt`` filled with each word."""
    out = []
    for s in range(0, len(words), batch):
        tokens = tokenizer([prompt.format(w) for w in words[s:s + batch]]).to(device)
        out.append(torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=1).cpu())
    return torch.cat(out) if out else torch.empty(0, 0)
