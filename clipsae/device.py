"""The ``--device`` option of every command that runs torch."""

import torch

from clipsae.errors import ClipsaeError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU) or a torch device name that exists here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ClipsaeError(f"--device {name!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ClipsaeError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return dev
