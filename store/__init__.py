"""The activation store: Zarr v3 parts written independently, read as one array per hook.

Names are imported on first use, so the command line can load without zarr or torch.
"""

from clipsae.lazy import lazy_exports

_EXPORTS = {
    "ActivationStore": "clipsae.store.reader",
    "Chunk": "clipsae.store.reader",
    "Part": "clipsae.store.reader",
    "complete_parts": "clipsae.store.reader",
    "HookStats": "clipsae.store.stats",
    "VerifyReport": "clipsae.store.integrity",
    "verify": "clipsae.store.integrity",
    "HookLayout": "clipsae.store.writer",
    "PartWriter": "clipsae.store.writer",
    "open_root": "clipsae.store.writer",
    "write_store": "clipsae.store.writer",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
