"""timm's convolutional trunks with stages (ConvNeXt, FastViT of MobileCLIP), inside open_clip's
TimmModel or alone, read through timm's public ``forward_intermediates``.

Hooks: ``stage.i`` (output of ``trunk.stages[i]``, positions row-major as tokens, as a ResNet's
``layer1…4``), ``pooled`` (the trunk's pooled features before its classifier) and ``embed`` (the
tower's image embedding).
"""

from clipsae.pipeline.towers import Block, Hook, register
from clipsae.pipeline.towers.timm_common import TimmTower, head_hooks, pooled_and_embed, trunk_of


@register
class TimmConv(TimmTower):
    family = "timm convolutional trunk"

    def __init__(self, visual):
        super().__init__(visual)
        self.hook_help = "use stage.i (stage indices, negatives count from the end) or " + ", ".join(head_hooks(visual))

    @classmethod
    def reads(cls, visual):
        trunk = trunk_of(visual)
        return (trunk is not None and hasattr(trunk, "stages") and hasattr(trunk, "forward_intermediates")
                and not hasattr(trunk, "num_prefix_tokens"))

    def resolve(self, item: str) -> Hook:
        n = len(self.trunk.stages)
        head = self.head_hook(item, n - 1)
        if head is not None:
            return head
        i = self.depth_index(item, "stage.", n, "stages")
        return Hook(f"stage.{i}", i, False, False, f"output of trunk.stages[{i}]", "spatial positions row-major as tokens")

    def run(self, images, hooks):
        wanted = {h.name for h in hooks}
        indices = sorted({h.depth for h in hooks if h.name.startswith("stage.")})
        full = bool(wanted & {"pooled", "embed"})
        got = self.trunk.forward_intermediates(images, indices=indices or [len(self.trunk.stages) - 1],
                                               stop_early=not full, intermediates_only=not full)
        final, inter = got if full else (None, got)
        out = {f"stage.{i}": (x.flatten(2).transpose(1, 2), tuple(x.shape[2:]))
               for i, x in zip(indices, inter)}
        if full:
            out.update(pooled_and_embed(self.visual, final, wanted))
        return out

    def block(self, hook):
        return Block(self.trunk.stages[int(hook.removeprefix("stage."))], "NCHW") if hook.startswith("stage.") else None
