"""Names and sizes that define the on-disk layout of an activation store (see docs/store.md)."""

from pathlib import Path

FORMAT_VERSION = 1
PARTS = "parts"
ACTS = "acts"
KEYS = "keys"
LABELS = "labels"
COMPLETE = "complete"

# Chunks are the unit of reading: big enough that a shuffled read runs at disk speed,
# small enough that a shuffle buffer holds many of them.
TARGET_CHUNK_BYTES = 8 * 2**20
DTYPES = ("float16", "float32")


def chunk_rows(n_tokens: int, d: int, itemsize: int, target_bytes: int = TARGET_CHUNK_BYTES) -> int:
    """Images per chunk so that one chunk of (rows, n_tokens, d) is about ``target_bytes``."""
    return max(1, target_bytes // (n_tokens * d * itemsize))


def chunk_file(store_dir: Path, arr, chunk_index: int) -> Path:
    """Path of the file holding chunk ``chunk_index`` (along images) of ``arr`` in a local store."""
    return Path(store_dir) / arr.path / arr.metadata.chunk_key_encoding.encode_chunk_key((chunk_index, 0, 0))
