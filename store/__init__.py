"""The activation store: Zarr v3 parts written independently, read as one array per hook."""

from store.reader import ActivationStore, Chunk, Part, complete_parts
from store.stats import HookStats
from store.verify import VerifyReport, verify
from store.writer import HookLayout, PartWriter, open_root, write_store

__all__ = [
    "ActivationStore",
    "Chunk",
    "HookLayout",
    "HookStats",
    "Part",
    "complete_parts",
    "PartWriter",
    "VerifyReport",
    "open_root",
    "verify",
    "write_store",
]
