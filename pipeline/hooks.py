"""Which activations to take from a vision tower, and a forward pass that takes them.

The hooks each tower family offers, and its token layout, are in ``pipeline/towers/`` (one module per
family; docs/extract.md has the table). This module turns `--layers` and `--tokens` into hooks and
runs the tower just far enough to take them.
"""

import torch
from torch import nn

from clipsae.errors import ClipsaeError
from clipsae.pipeline.towers import Hook, Tower, tower_for
from clipsae.store.layout import TOKEN_MODES, HookLayout

__all__ = ["Hook", "HookedForward", "resolve_hooks", "tower_for"]


def resolve_hooks(visual: nn.Module, items: list[str], tokens: str) -> list[Hook]:
    """Turn user items into hooks for this tower, checking range and token mode."""
    if tokens not in TOKEN_MODES:
        raise ClipsaeError(f"--tokens must be one of {', '.join(TOKEN_MODES)}, not {tokens!r}")
    tower = tower_for(visual)
    hooks = [tower.resolve(item) for item in items]
    names = [h.name for h in hooks]
    if len(set(names)) != len(names):
        raise ClipsaeError(f"--layers names a hook twice: {', '.join(names)}")
    pooled = [h for h in hooks if h.pooled]
    for h in hooks:
        if h.pooled and tokens == "patches":
            raise ClipsaeError(f"hook {h.name} is a pooled vector with no patch tokens; use --tokens cls or all")
        if not h.pooled and tokens == "cls" and not (h.prefixed and tower.has_cls):
            why = "is a feature map, with no CLS token" if not h.prefixed else f"has no CLS token: this {tower.family} has none"
            instead = next((p.name for p in pooled), None) or tower.pooled_hook
            raise ClipsaeError(f"hook {h.name} {why}; use --tokens patches or all, or the pooled hook {instead} for "
                               f"one vector per image")
    return hooks


def meaning(hook: Hook, tower: Tower, tokens: str) -> str:
    """The hook's meaning as the store records it, naming the tokens kept."""
    if hook.pooled:
        return hook.what
    if not hook.prefixed:
        return f"{hook.what}; {hook.grid_text}"
    if tokens == "cls":
        return f"{hook.what}; the CLS token only"
    if tokens == "patches":
        return f"{hook.what}; {hook.grid_text}, no {tower.prefix_text()}" if tower.prefix else f"{hook.what}; {hook.grid_text}"
    if tower.prefix == 0:
        return f"{hook.what}; {hook.grid_text} (no CLS token)"
    return f"{hook.what}; {tower.prefix_text()} then {hook.grid_text}"


class HookedForward(nn.Module):
    """Runs the tower just far enough and returns ``{hook: acts_NTD}`` for the chosen tokens."""

    def __init__(self, visual: nn.Module, hooks: list[Hook], tokens: str):
        super().__init__()
        self.visual = visual
        self.hooks = hooks
        self.tokens = tokens
        self.tower = tower_for(visual)
        self.last = max(h.depth for h in hooks)

    def _select(self, hook: Hook, x_NTD: torch.Tensor) -> torch.Tensor:
        if hook.pooled or not hook.prefixed or self.tokens == "all":
            return x_NTD
        return x_NTD[:, :1] if self.tokens == "cls" else x_NTD[:, self.tower.prefix:]

    @torch.no_grad()
    def forward(self, images_NCHW: torch.Tensor) -> dict[str, torch.Tensor]:
        taken = self.tower.run(images_NCHW, self.hooks)
        return {h.name: self._select(h, taken[h.name][0]) for h in self.hooks}

    @torch.no_grad()
    def layouts(self, device: torch.device) -> list[HookLayout]:
        """Each hook's (n_tokens, d) and token layout, read off one forward pass on a blank image."""
        taken = self.tower.run(torch.zeros(1, 3, *self.tower.image_size, device=device), self.hooks)
        out = []
        for h in self.hooks:
            x, grid = taken[h.name]
            x = self._select(h, x)
            n_tokens, d = x.shape[1:]
            cls_token, registers = False, 0
            if h.prefixed and self.tokens == "all":
                cls_token, registers = self.tower.has_cls, self.tower.registers
            elif h.prefixed and self.tokens == "cls":
                cls_token, grid = True, None
            if h.pooled:
                grid = None
            out.append(HookLayout(h.name, n_tokens, d, meaning(h, self.tower, self.tokens), cls_token, grid, registers))
        return out
