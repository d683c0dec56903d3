"""The vision towers clipsae reads: one module per family, each registered by the modules it recognises.

A tower knows its hooks (which points of its forward pass can be stored, by name), how to run just far
enough to take them, its token layout (prefix tokens: the CLS token and registers, then the patch grid),
and where the model can be re-entered (the module whose output a hook is), which splice, intervene and
the explorer's steering use. Everything else in clipsae asks the tower, never the model's classes.
"""

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from clipsae.errors import ClipsaeError


@dataclass(frozen=True)
class Hook:
    """A resolved hook: its stored name, how deep the forward must run for it, and its tokens.

    ``prefixed``: its tokens are the tower's prefix tokens (CLS, registers) then the patch grid;
    otherwise a hook of several tokens is a feature map's positions row-major. ``what`` says what
    the activations are; ``grid_text`` how the tokens after the prefix lie (``7x7 patches row-major``).
    """

    name: str
    depth: int  # the block or stage it is read after (−1: before the first); the forward stops there
    pooled: bool
    prefixed: bool
    what: str
    grid_text: str = ""


@dataclass(frozen=True)
class Block:
    """A module whose output is a hook's tokens, and how that output holds them: ``NLD`` (batch first),
    ``LND`` (sequence first) or ``NCHW`` (a feature map, positions row-major)."""

    module: nn.Module
    layout: str


class Tower:
    """One family of vision towers (subclasses register themselves with :func:`register`)."""

    family = ""  # how messages and docs name the family
    hook_help = ""  # the hooks it offers, for a refusal
    pooled_hook = "embed"  # its hook of one vector per image, named where a CLS token is asked of a tower with none

    def __init__(self, visual: nn.Module):
        self.visual = visual

    @classmethod
    def reads(cls, visual: nn.Module) -> bool:
        """Whether ``visual`` is a tower of this family."""
        raise NotImplementedError

    @property
    def has_cls(self) -> bool:
        return False

    @property
    def registers(self) -> int:
        return 0

    @property
    def prefix(self) -> int:
        """How many tokens come before the patch grid in a prefixed hook."""
        return int(self.has_cls) + self.registers

    def prefix_text(self) -> str:
        """The prefix tokens in words: ``CLS``, ``CLS, 4 registers``, or ``no CLS``."""
        parts = (["CLS"] if self.has_cls else []) + ([f"{self.registers} registers"] if self.registers else [])
        return ", ".join(parts) if parts else "no CLS"

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    def resolve(self, item: str) -> Hook:
        """The hook a `--layers` item names; one line naming the hooks there are for anything else."""
        raise NotImplementedError

    def run(self, images_NCHW: torch.Tensor, hooks: list[Hook]) -> dict[str, tuple[torch.Tensor, tuple | None]]:
        """Each hook's activations, all tokens (N, T, D), and the grid its tokens after the prefix form."""
        raise NotImplementedError

    def block(self, hook: str) -> Block | None:
        """The module whose output is ``hook``'s tokens, where the model can be re-run from it."""
        return None

    def joint_map(self, hook: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """A map of directions at ``hook`` into the image–text embedding space, where there is one."""
        return (lambda d: d) if hook == "embed" else None

    def point_map(self, hook: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """A pooled hook's vectors carried to the image embedding, biases included (what the model does to
        them, where :meth:`joint_map` carries directions); by default the joint map, which has no bias."""
        return self.joint_map(hook)

    def mlp_out(self, block: int) -> torch.Tensor | None:
        """(neurons, d): the output direction of every MLP neuron of block ``block``, for a transformer."""
        return None

    def depth_index(self, item: str, prefix: str, n: int, unit: str) -> int:
        """Block (or stage) ``item`` (``3``, ``-1``, ``{prefix}3``) as 0…n−1; one line where out of range."""
        text = item.removeprefix(prefix)
        try:
            i = int(text)
        except ValueError:
            raise ClipsaeError(f"unknown hook {item!r} for a {self.family}; {self.hook_help}") from None
        if not -n <= i < n:
            raise ClipsaeError(f"layer {i} is out of range: the model has {n} {unit} (0..{n - 1}, or -{n}..-1)")
        return i % n


_FAMILIES: list[type[Tower]] = []


def register(cls: type[Tower]) -> type[Tower]:
    """Add a tower family (a class decorator); families are tried in the order they register."""
    _FAMILIES.append(cls)
    return cls


def tower_for(visual: nn.Module) -> Tower:
    """The tower that reads ``visual``; anything else is refused with the families there are."""
    for family in _FAMILIES:
        if family.reads(visual):
            return family(visual)
    raise ClipsaeError(f"vision tower {type(visual).__name__} is not supported; clipsae reads open_clip's "
                       f"VisionTransformer and ModifiedResNet, and timm ViTs (VisionTransformer, Eva) and "
                       f"convolutional trunks with stages (ConvNeXt, FastViT)")


from clipsae.pipeline.towers import openclip_resnet, openclip_vit, timm_conv, timm_vit  # noqa: E402,F401  (they register)
