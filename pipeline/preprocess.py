"""open_clip's preprocessing split in two: PIL work to uint8 in the loaders, normalisation on the device.

The loaders then send 3·H·W bytes per image instead of four times as many float32, and the
device does the division and normalisation, exactly as ``ToTensor`` and ``Normalize`` would:
x = (uint8 / 255 − mean) / std in float32, so the images the model sees are bitwise the same.
"""

from dataclasses import dataclass

import torch
from torchvision import transforms as T


@dataclass(frozen=True)
class SplitPreprocess:
    """``host``: PIL image → uint8 (3, H, W); ``finish``: uint8 (N, 3, H, W) on any device → model input."""

    host: T.Compose
    normalize: tuple[T.Normalize, ...]

    def finish(self, images_N3HW: torch.Tensor) -> torch.Tensor:
        x = images_N3HW.to(torch.get_default_dtype()).div(255)
        for norm in self.normalize:
            x = norm(x)
        return x


def split_preprocess(preprocess: T.Compose) -> SplitPreprocess | None:
    """The split form of a Compose of PIL transforms, then ToTensor, then Normalize steps;
    None for any other shape (the caller then keeps the whole transform in the loaders)."""
    steps = list(getattr(preprocess, "transforms", []))
    at = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
    if at is None or not all(isinstance(t, T.Normalize) for t in steps[at + 1:]):
        return None
    return SplitPreprocess(T.Compose([*steps[:at], T.PILToTensor()]), tuple(steps[at + 1:]))
