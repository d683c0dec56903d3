"""What the timm towers share: a timm model alone as a tower, and the pooled and embedding hooks.

A timm trunk reaches clipsae two ways: inside open_clip's ``TimmModel`` (SigLIP, EVA-02, MobileCLIP,
ConvNeXt CLIP: ``visual.trunk`` then ``visual.head``, the projection into the text tower's space), or
alone (``--model timm:NAME``: DINOv2, DINOv3), wrapped here in :class:`TimmAlone`, whose output is the
trunk's pooled features and which has no image–text space.
"""

import torch
from torch import nn

from clipsae.errors import ClipsaeError
from clipsae.pipeline.towers import Hook, Tower


class TimmAlone(nn.Module):
    """A timm model used as a vision tower on its own, with no classifier (``num_classes=0``)."""

    def __init__(self, trunk: nn.Module, image_size: tuple[int, int]):
        super().__init__()
        self.trunk = trunk
        self.image_size = tuple(image_size)

    def forward(self, images_NCHW: torch.Tensor) -> torch.Tensor:
        return self.trunk(images_NCHW)


def trunk_of(visual: nn.Module) -> nn.Module | None:
    """The timm model inside ``visual`` (open_clip's TimmModel or TimmAlone), or None."""
    trunk = getattr(visual, "trunk", None)
    return trunk if type(trunk).__module__.startswith("timm.") else None


def alone(visual: nn.Module) -> bool:
    return isinstance(visual, TimmAlone)


def head_hooks(visual: nn.Module) -> tuple[str, ...]:
    """The pooled hooks a timm tower offers: ``pooled``, and ``embed`` where it has an image embedding."""
    return ("pooled",) if alone(visual) else ("pooled", "embed")


def refuse_embed(visual: nn.Module, name: str) -> None:
    if alone(visual):
        raise ClipsaeError(f"{type(visual.trunk).__name__} used alone (timm:{name}) has no image embedding beyond "
                           f"its pooled features; use the hook pooled")


def pooled_and_embed(visual: nn.Module, final: torch.Tensor, wanted: set[str]) -> dict:
    """``pooled`` (the trunk's pooled features before its classifier) and ``embed`` (the tower's output:
    the trunk's classifier, then open_clip's head) from the trunk's final features."""
    trunk = visual.trunk
    out = {}
    pooled = trunk.forward_head(final, pre_logits=True)
    if "pooled" in wanted:
        if pooled.ndim != 2:
            raise ClipsaeError(f"{type(trunk).__name__} pools in open_clip's head, not in the trunk: it has no pooled "
                               f"hook; use embed")
        out["pooled"] = (pooled[:, None], None)
    if "embed" in wanted:  # the head's last layer on the pooled features, not the pooling run twice
        out["embed"] = (visual.head(trunk.get_classifier()(pooled))[:, None], None)
    return out


def _linear_chain(modules: list[nn.Module]) -> list[torch.Tensor] | None:
    """The weights of a chain of Linear, Identity and Dropout layers, or None where another layer is in it."""
    weights = []
    for m in modules:
        if isinstance(m, nn.Sequential):
            inner = _linear_chain(list(m))
            if inner is None:
                return None
            weights += inner
        elif isinstance(m, nn.Linear):
            weights.append(m.weight.detach().float())
        elif not isinstance(m, (nn.Identity, nn.Dropout)):
            return None
    return weights


def pooled_point_map(visual: nn.Module):
    """``pooled`` vectors to the tower's output, as its forward takes them: the trunk's classifier, then
    open_clip's head (a timm model alone outputs its pooled features)."""
    if alone(visual):
        return lambda p: p
    return lambda p: visual.head(visual.trunk.get_classifier()(p))


def pooled_joint_map(visual: nn.Module):
    """``pooled`` into the image–text space through the trunk's classifier and open_clip's head, exact
    where both are linear (biases dropped: they move points, not directions); None otherwise."""
    if alone(visual):
        return None
    weights = _linear_chain([visual.trunk.get_classifier(), visual.head])
    if weights is None:
        return None

    def to_joint(d: torch.Tensor) -> torch.Tensor:
        for w in weights:
            d = d @ w.to(d.device).T
        return d
    return to_joint


class TimmTower(Tower):
    """What the timm families share: the trunk, the ``pooled`` and ``embed`` hooks after the trunk's last block
    or stage, and their maps to the image embedding."""

    pooled_hook = "pooled"

    def __init__(self, visual):
        super().__init__(visual)
        self.trunk = trunk_of(visual)

    def head_hook(self, item: str, depth: int) -> Hook | None:
        """``pooled`` or ``embed``, read after block (or stage) ``depth``; None for any other item."""
        if item == "pooled":
            return Hook("pooled", depth, True, False, "the trunk's pooled features (trunk.forward_head, pre-logits)")
        if item == "embed":
            refuse_embed(self.visual, type(self.trunk).__name__)
            return Hook("embed", depth, True, False, "image embedding: the tower's output (encode_image)")
        return None

    def joint_map(self, hook):
        return pooled_joint_map(self.visual) if hook == "pooled" else super().joint_map(hook)

    def point_map(self, hook):
        return pooled_point_map(self.visual) if hook == "pooled" else super().point_map(hook)
