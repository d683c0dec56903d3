"""The SAE architectures, one module each, registered by their module's name.

Each module defines ``ARCH``, an :class:`~clipsae.train.archs.base.Architecture` that carries
the architecture's options check, label, loss, export mapping and resampling policy. Adding an
architecture is one file here (and its test): the name is the file's name.
"""

import importlib
import pkgutil

from clipsae.errors import ClipsaeError

_NOT_ARCHITECTURES = {"base", "sparse_family", "baseline"}


def names() -> list[str]:
    """Every architecture's name, found without importing any of them (so without torch)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_ARCHITECTURES)


def get(name: str):
    """The architecture called ``name``; a ClipsaeError lists the known ones otherwise."""
    if name not in names():
        raise ClipsaeError(f"--arch {name!r} is not one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}").ARCH
