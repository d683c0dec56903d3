"""open_clip's ModifiedResNet (RN50, RN101, …): its stages run by hand.

Hooks: ``layer1`` … ``layer4`` (a stage's feature map, positions row-major as tokens) and
``attnpool`` (the attention-pooled image embedding).
"""

from open_clip.modified_resnet import ModifiedResNet

from clipsae.errors import ClipsaeError
from clipsae.pipeline.towers import Block, Hook, Tower, register

NAMED = ("layer1", "layer2", "layer3", "layer4", "attnpool")


@register
class OpenClipResNet(Tower):
    family = "ResNet"
    pooled_hook = "attnpool"
    hook_help = "ResNet hooks are " + ", ".join(NAMED)

    @classmethod
    def reads(cls, visual):
        return isinstance(visual, ModifiedResNet)

    def resolve(self, item: str) -> Hook:
        if item.lstrip("-").isdigit() or item.startswith("resid."):
            raise ClipsaeError(f"integer layers are for ViTs; {self.hook_help}")
        if item == "attnpool":
            return Hook("attnpool", 4, True, False, "output of visual.attnpool: the pooled image embedding")
        if item in NAMED:
            return Hook(item, int(item[-1]), False, False, f"output of visual.{item}", "spatial positions row-major as tokens")
        raise ClipsaeError(f"unknown hook {item!r} for a ResNet; use {', '.join(NAMED)}")

    def run(self, images, hooks):
        v = self.visual
        wanted = {h.name for h in hooks}
        out = {}
        x = v.stem(images)
        for stage in range(1, min(max(h.depth for h in hooks), 4) + 1):
            x = getattr(v, f"layer{stage}")(x)
            if f"layer{stage}" in wanted:
                out[f"layer{stage}"] = (x.flatten(2).transpose(1, 2), tuple(x.shape[2:]))  # (N, C, H, W) -> (N, H*W, C)
        if "attnpool" in wanted:
            out["attnpool"] = (v.attnpool(x)[:, None], None)
        return out

    def block(self, hook):
        return Block(getattr(self.visual, hook), "NCHW") if hook in NAMED[:4] else None

    def joint_map(self, hook):
        return (lambda d: d) if hook == "attnpool" else None
