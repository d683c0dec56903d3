"""timm's ViT-like trunks (VisionTransformer: SigLIP, SigLIP 2, SO400M, DINOv2; Eva: EVA-02, DINOv3),
inside open_clip's TimmModel or alone, read through timm's public ``forward_intermediates``.

timm's trunks differ in how tokens are embedded (rotary position embeddings in Eva, register tokens,
dynamic image sizes, patch dropout); ``forward_intermediates`` is the one interface all of them keep,
so the hooks equal each model's own forward without a copy of its code here.

Hooks: ``resid.i`` (output of ``trunk.blocks[i]``), ``ln_pre`` (output of ``trunk.norm_pre``, where the
trunk has one), ``norm`` (the trunk's final norm over all tokens), ``pooled`` (the trunk's pooled
features before its classifier: CLS, mean or attention pooling, whichever it uses), ``embed`` (the
tower's image embedding). Tokens: the prefix (CLS, then registers, where the trunk has them), then the
patches row-major.
"""

import torch
from torch import nn

from clipsae.errors import ClipsaeError
from clipsae.pipeline.towers import Block, Hook, register
from clipsae.pipeline.towers.timm_common import TimmTower, head_hooks, pooled_and_embed, trunk_of


def _vit_like(trunk) -> bool:
    return all(hasattr(trunk, a) for a in ("blocks", "num_prefix_tokens", "patch_embed", "forward_intermediates"))


@register
class TimmViT(TimmTower):
    family = "timm ViT"

    def __init__(self, visual):
        super().__init__(visual)
        named = (("ln_pre",) if self._has_norm_pre else ()) + ("norm",) + head_hooks(visual)
        self.hook_help = "use block indices (negatives count from the end) or " + ", ".join(named)

    @classmethod
    def reads(cls, visual):
        trunk = trunk_of(visual)
        return trunk is not None and _vit_like(trunk)

    @property
    def _has_norm_pre(self) -> bool:
        return not isinstance(getattr(self.trunk, "norm_pre", nn.Identity()), nn.Identity)

    @property
    def has_cls(self) -> bool:
        return getattr(self.trunk, "cls_token", None) is not None

    @property
    def registers(self) -> int:
        return int(self.trunk.num_prefix_tokens) - int(self.has_cls)

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        pe = self.trunk.patch_embed
        if hasattr(pe, "dynamic_feat_size"):
            return tuple(pe.dynamic_feat_size(tuple(size)))
        return tuple(pe.grid_size)

    def resolve(self, item: str) -> Hook:
        n = len(self.trunk.blocks)
        gh, gw = self.grid(self.image_size)
        grid = f"{gh}x{gw} patches row-major"
        if item == "ln_pre" and self._has_norm_pre:
            return Hook("ln_pre", -1, False, True, "output of trunk.norm_pre (input to block 0)", grid)
        if item == "norm":
            return Hook("norm", n - 1, False, True, "output of trunk.norm, the final norm over all tokens", grid)
        head = self.head_hook(item, n - 1)
        if head is not None:
            return head
        i = self.depth_index(item, "resid.", n, "blocks")
        return Hook(f"resid.{i}", i, False, True, f"output of trunk.blocks[{i}] (residual stream)", grid)

    def run(self, images, hooks):
        wanted = {h.name for h in hooks}
        indices = sorted({h.depth for h in hooks if h.name.startswith("resid.")})
        full = bool(wanted & {"norm", "pooled", "embed"})
        taken = {}
        handle = None
        if "ln_pre" in wanted:
            handle = self.trunk.norm_pre.register_forward_hook(lambda m, i, o: taken.setdefault("ln_pre", o))
        # With no block asked for, the one the other hooks need: the last (norm, pooled, embed) or the first (ln_pre).
        take = indices or [len(self.trunk.blocks) - 1 if full else 0]
        try:
            got = self.trunk.forward_intermediates(
                images, indices=take, norm=False, stop_early=not full, output_fmt="NLC", intermediates_only=not full,
                # Eva's forward_intermediates fails asking for prefix tokens a trunk has none of (PE-Core).
                return_prefix_tokens=self.trunk.num_prefix_tokens > 0)
        finally:
            if handle is not None:
                handle.remove()
        final, inter = got if full else (None, got)
        grid = self.grid(images.shape[-2:])
        out = {}
        for i, x in zip(indices, inter):
            patches, prefix = x if isinstance(x, tuple) else (x, None)
            out[f"resid.{i}"] = (patches if prefix is None else torch.cat([prefix, patches], dim=1), grid)
        if "ln_pre" in wanted:
            out["ln_pre"] = (taken["ln_pre"], grid)
        if full:
            if "norm" in wanted:
                out["norm"] = (final, grid)
            out.update(pooled_and_embed(self.visual, final, wanted))
        return out

    def block(self, hook):
        if not hook.startswith("resid."):
            return None
        return Block(self.trunk.blocks[int(hook.removeprefix("resid."))], "NLD")

    def mlp_out(self, block):
        mlp = getattr(self.trunk.blocks[block], "mlp", None)
        fc2 = getattr(mlp, "fc2", None)
        if not isinstance(fc2, nn.Linear):
            raise ClipsaeError(f"block {block} of {type(self.trunk).__name__} has no MLP output layer (mlp.fc2)")
        return fc2.weight.detach().float().T
