"""Stage two: sparse autoencoders trained by streaming rows from an activation store.

Names are imported on first use, so the command line can load without torch.
"""

from clipsae.lazy import lazy_exports

_EXPORTS = {
    "load_sae": "clipsae.train.load",
    "SparseAutoencoder": "clipsae.train.model",
    "SparseCodes": "clipsae.train.codes",
}
__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
