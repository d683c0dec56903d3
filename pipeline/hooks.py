"""Which activations to take from an open_clip vision tower, and a forward pass that takes them.

Hook names (as stored):
- ViT: ``resid.i`` (output of ``visual.transformer.resblocks[i]``), ``ln_pre`` (input to
  block 0), ``ln_post`` (pooled token after the final LayerNorm), ``embed`` (``ln_post``
  then ``proj``: the image embedding). Token order: CLS, then patches row-major.
- ModifiedResNet: ``layer1`` … ``layer4`` (spatial positions row-major as tokens) and
  ``attnpool`` (the pooled embedding).
Pooled hooks hold one token. The forward stops after the last block any hook needs.
"""

from dataclasses import dataclass

import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn

from clipsae.errors import ClipsaeError
from clipsae.store.layout import TOKEN_MODES

VIT_NAMED = ("ln_pre", "ln_post", "embed")
RESNET_NAMED = ("layer1", "layer2", "layer3", "layer4", "attnpool")


@dataclass(frozen=True)
class Hook:
    """A resolved hook: its stored name, what it is, and the depth it needs."""

    name: str
    kind: str  # "resid", "ln_pre", "ln_post", "embed", "layer", "attnpool"
    index: int  # block (ViT) or stage (ResNet, 1..4) it is read after; -1 for ln_pre
    pooled: bool
    meaning: str


def tower_kind(visual: nn.Module) -> str:
    """``"vit"`` or ``"resnet"``; anything else is refused with the reason."""
    if isinstance(visual, VisionTransformer):
        return "vit"
    if isinstance(visual, ModifiedResNet):
        return "resnet"
    raise ClipsaeError(
        f"vision tower {type(visual).__name__} is not supported; clipsae reads open_clip "
        "VisionTransformer and ModifiedResNet towers"
    )


def _grid(visual: VisionTransformer) -> str:
    gh, gw = visual.grid_size
    return f"{gh}x{gw}"


def resolve_hooks(visual: nn.Module, items: list[str], tokens: str) -> list[Hook]:
    """Turn user items into hooks for this tower, checking range and token mode."""
    if tokens not in TOKEN_MODES:
        raise ClipsaeError(f"--tokens must be one of {', '.join(TOKEN_MODES)}, not {tokens!r}")
    kind = tower_kind(visual)
    hooks: list[Hook] = []
    for item in items:
        hook = _resolve_vit(visual, item) if kind == "vit" else _resolve_resnet(item)
        hooks.append(_tokens_said(hook, tokens) if kind == "vit" and not hook.pooled else hook)
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ClipsaeError(f"--layers names a hook twice: {', '.join(names)}")
    for h in hooks:
        if h.pooled and tokens == "patches":
            raise ClipsaeError(f"hook {h.name} is a pooled vector with no patch tokens; use --tokens cls or all")
        if kind == "resnet" and not h.pooled and tokens == "cls":
            raise ClipsaeError(f"hook {h.name} is a ResNet feature map with no CLS token; use --tokens patches or all")
    return hooks


def _tokens_said(hook: Hook, tokens: str) -> Hook:
    """The hook with its meaning naming the tokens the store keeps: all, the CLS token, or the patches."""
    if tokens == "all":
        return hook
    what, _, layout = hook.meaning.partition("; CLS then ")
    kept = "the CLS token only" if tokens == "cls" else layout.replace(" row-major", " row-major, no CLS")
    return Hook(hook.name, hook.kind, hook.index, hook.pooled, f"{what}; {kept}")


def _resolve_vit(visual: VisionTransformer, item: str) -> Hook:
    n = len(visual.transformer.resblocks)
    grid = _grid(visual)
    if item in VIT_NAMED:
        return {
            "ln_pre": Hook("ln_pre", "ln_pre", -1, False, f"output of visual.ln_pre (input to block 0); CLS then {grid} patches row-major"),
            "ln_post": Hook("ln_post", "ln_post", n - 1, True, "pooled (CLS) token after visual.ln_post, before proj"),
            "embed": Hook("embed", "embed", n - 1, True, "image embedding: ln_post pooled token @ visual.proj"),
        }[item]
    try:
        i = int(item.removeprefix("resid."))
    except ValueError:
        raise ClipsaeError(
            f"unknown hook {item!r} for a ViT; use block indices 0..{n - 1} (negatives count from the end) "
            f"or {', '.join(VIT_NAMED)}"
        ) from None
    if not -n <= i < n:
        raise ClipsaeError(f"layer {i} is out of range: the model has {n} blocks (0..{n - 1}, or -{n}..-1)")
    i %= n
    return Hook(
        f"resid.{i}", "resid", i, False,
        f"output of visual.transformer.resblocks[{i}] (residual stream); CLS then {grid} patches row-major",
    )


def _resolve_resnet(item: str) -> Hook:
    if item.lstrip("-").isdigit() or item.startswith("resid."):
        raise ClipsaeError(f"integer layers are for ViTs; ResNet hooks are {', '.join(RESNET_NAMED)}")
    if item == "attnpool":
        return Hook("attnpool", "attnpool", 4, True, "output of visual.attnpool: the pooled image embedding")
    if item in RESNET_NAMED:
        stage = int(item[-1])
        return Hook(item, "layer", stage, False, f"output of visual.{item}; spatial positions row-major as tokens")
    raise ClipsaeError(f"unknown hook {item!r} for a ResNet; use {', '.join(RESNET_NAMED)}")


class HookedForward(nn.Module):
    """Runs the tower just far enough and returns ``{hook: acts_NTD}`` for the chosen tokens."""

    def __init__(self, visual: nn.Module, hooks: list[Hook], tokens: str):
        super().__init__()
        self.visual = visual
        self.hooks = hooks
        self.tokens = tokens
        self.kind = tower_kind(visual)
        self.last = max(h.index for h in hooks)

    def _select(self, hook: Hook, x_NTD: torch.Tensor) -> torch.Tensor:
        if hook.pooled or self.kind == "resnet" or self.tokens == "all":
            return x_NTD
        return x_NTD[:, :1] if self.tokens == "cls" else x_NTD[:, 1:]

    @torch.no_grad()
    def forward(self, images_NCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        taken = self._vit(images_NCHW) if self.kind == "vit" else self._resnet(images_NCHW)
        return {h.name: self._select(h, taken[h.name]) for h in self.hooks}

    def _vit(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.visual
        wanted = {h.name for h in self.hooks}
        out: dict[str, torch.Tensor] = {}
        x = v._embeds(images)  # (N, T, D), after ln_pre
        if "ln_pre" in wanted:
            out["ln_pre"] = x
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for i, block in enumerate(v.transformer.resblocks[: self.last + 1]):
            x = block(x)
            if f"resid.{i}" in wanted:
                out[f"resid.{i}"] = x if batch_first else x.transpose(0, 1)
        if not batch_first:
            x = x.transpose(0, 1)
        if wanted & {"ln_post", "embed"}:
            pooled, _ = v._pool(x)
            out["ln_post"] = pooled[:, None]
            out["embed"] = (pooled @ v.proj if v.proj is not None else pooled)[:, None]
        return out

    def _resnet(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.visual
        wanted = {h.name for h in self.hooks}
        out: dict[str, torch.Tensor] = {}
        x = v.stem(images)
        for stage in range(1, min(self.last, 4) + 1):
            x = getattr(v, f"layer{stage}")(x)
            if f"layer{stage}" in wanted:
                out[f"layer{stage}"] = x.flatten(2).transpose(1, 2)  # (N, C, H, W) -> (N, H*W, C)
        if "attnpool" in wanted:
            out["attnpool"] = v.attnpool(x)[:, None]
        return out
