"""open_clip's preprocessing split in two: PIL work to uint8 in the loaders, normalisation on the device.

The loaders then send 3·H·W bytes per image instead of four times as many float32, and the
device does the division and normalisation, exactly as ``ToTensor`` and ``Normalize`` would:
x = (uint8 / 255 − mean) / std in float32, so the images the model sees are bitwise the same.
"""

from dataclasses import dataclass, field

import torch
from torchvision import transforms as T


@dataclass(frozen=True)
class SplitPreprocess:
    """``host``: PIL image → uint8 (3, H, W); ``finish``: uint8 (N, 3, H, W) on any device → model input."""

    host: T.Compose
    normalize: tuple[T.Normalize, ...]
    _on_device: dict = field(default_factory=dict, compare=False, repr=False)

    def finish(self, images_N3HW: torch.Tensor) -> torch.Tensor:
        x = images_N3HW.to(torch.get_default_dtype()).div(255)
        # torchvision's Normalize does x.sub_(mean).div_(std), the same ops as here, but first makes mean and
        # std on the device and asks whether std has a 0: a copy to the device and a read back, each batch.
        for mean, std in self._stats(x.device, x.dtype):
            x = x.sub(mean).div(std)
        return x

    def _stats(self, device: torch.device, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = (device, dtype)
        if key not in self._on_device:
            for norm in self.normalize:
                if any(v == 0 for v in norm.std):
                    raise ValueError(f"std evaluated to zero after conversion to {dtype}, leading to division by zero.")
            self._on_device[key] = [(torch.as_tensor(n.mean, dtype=dtype, device=device).view(-1, 1, 1),
                                     torch.as_tensor(n.std, dtype=dtype, device=device).view(-1, 1, 1))
                                    for n in self.normalize]
        return self._on_device[key]


def split_preprocess(preprocess: T.Compose) -> SplitPreprocess | None:
    """The split form of a Compose of PIL transforms, then ToTensor, then Normalize steps;
    None for any other shape (the caller then keeps the whole transform in the loaders)."""
    steps = list(getattr(preprocess, "transforms", []))
    at = next((i for i, t in enumerate(steps) if isinstance(t, T.ToTensor)), None)
    if at is None or not all(isinstance(t, T.Normalize) for t in steps[at + 1:]):
        return None
    return SplitPreprocess(T.Compose([*steps[:at], T.PILToTensor()]), tuple(steps[at + 1:]))
