"""open_clip's own VisionTransformer (ViT-B-32, ViT-L-14, …): its blocks run by hand.

Hooks: ``resid.i`` (output of ``visual.transformer.resblocks[i]``), ``ln_pre`` (input to block 0),
``ln_post`` (the pooled token after the final LayerNorm), ``embed`` (``ln_post`` then ``proj``).
Tokens: CLS, then the patches row-major.
"""

import torch
from open_clip.transformer import VisionTransformer

from clipsae.pipeline.towers import Block, Hook, Tower, register

NAMED = ("ln_pre", "ln_post", "embed")


@register
class OpenClipViT(Tower):
    family = "ViT"
    pooled_hook = "ln_post"
    hook_help = "use block indices (negatives count from the end) or " + ", ".join(NAMED)

    @classmethod
    def reads(cls, visual):
        return isinstance(visual, VisionTransformer)

    @property
    def has_cls(self) -> bool:
        return True

    @property
    def n_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    def _grid_text(self) -> str:
        gh, gw = self.visual.grid_size
        return f"{gh}x{gw} patches row-major"

    def resolve(self, item: str) -> Hook:
        n, grid = self.n_blocks, self._grid_text()
        if item == "ln_pre":
            return Hook("ln_pre", -1, False, True, "output of visual.ln_pre (input to block 0)", grid)
        if item == "ln_post":
            return Hook("ln_post", n - 1, True, False, "pooled (CLS) token after visual.ln_post, before proj")
        if item == "embed":
            return Hook("embed", n - 1, True, False, "image embedding: ln_post pooled token @ visual.proj")
        i = self.depth_index(item, "resid.", n, "blocks")
        return Hook(f"resid.{i}", i, False, True,
                    f"output of visual.transformer.resblocks[{i}] (residual stream)", grid)

    def run(self, images, hooks):
        v = self.visual
        wanted = {h.name for h in hooks}
        grid = tuple(v.grid_size)
        out = {}
        x = v._embeds(images)  # (N, T, D), after ln_pre
        if "ln_pre" in wanted:
            out["ln_pre"] = (x, grid)
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for i, block in enumerate(v.transformer.resblocks[: max(h.depth for h in hooks) + 1]):
            x = block(x)
            if f"resid.{i}" in wanted:
                out[f"resid.{i}"] = (x if batch_first else x.transpose(0, 1), grid)
        if not batch_first:
            x = x.transpose(0, 1)
        if wanted & {"ln_post", "embed"}:
            pooled, _ = v._pool(x)
            out["ln_post"] = (pooled[:, None], None)
            out["embed"] = ((pooled @ v.proj if v.proj is not None else pooled)[:, None], None)
        return out

    def block(self, hook):
        if not hook.startswith("resid."):
            return None
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        return Block(self.visual.transformer.resblocks[int(hook.removeprefix("resid."))], "NLD" if batch_first else "LND")

    def joint_map(self, hook):
        """``ln_post``: d ↦ d·proj, exact. ``resid.L``: d ↦ ((d − mean(d)) ⊙ γ)·proj with γ the final
        LayerNorm's weight, an approximation (see analysis/model/joint_space.py)."""
        v = self.visual
        proj = v.proj.detach().float() if v.proj is not None else None
        if hook == "ln_post":
            return lambda d: d @ proj if proj is not None else d
        if hook.startswith("resid."):
            gamma = v.ln_post.weight.detach().float()

            def resid(d: torch.Tensor) -> torch.Tensor:
                d = (d - d.mean(1, keepdim=True)) * gamma.to(d.device)
                return d @ proj.to(d.device) if proj is not None else d
            return resid
        return super().joint_map(hook)

    def mlp_out(self, block):
        return self.visual.transformer.resblocks[block].mlp.c_proj.weight.detach().float().T
