"""The run directory's checkpoint: written whole to a temporary file, then renamed into place."""

import os
from pathlib import Path

import torch

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(out: Path, state: dict) -> None:
    """Atomically replace ``out/checkpoint.pt``: a kill leaves the previous one intact."""
    path = out / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def load_checkpoint(out: Path) -> dict | None:
    """The last checkpoint written to ``out``, or None."""
    path = out / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
