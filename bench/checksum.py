"""What checking every chunk's CRC32C on read costs: shuffled chunk reads through ActivationStore
(every chunk checked against its part's record) vs the same reads of the same chunk files with no
check, in the same run.

Measured twice: with the files in the page cache (the check's worst case: nothing else is slow)
and evicted from it before each side (as a trainer reading a store bigger than memory sees it).
"""

import random
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import activation_array, evict, timed  # noqa: E402
from clipsae.store import ActivationStore, write_store  # noqa: E402
from clipsae.store import zarr_backend as zb  # noqa: E402


def main():
    a, acts = activation_array(__doc__, lambda ap: ap.add_argument("--repeats", type=int, default=3))
    work = Path(tempfile.mkdtemp(dir=a.dir))
    try:
        path = work / "s.zarr"
        write_store(path, {"h": acts}, keys=[str(i) for i in range(a.images)], attrs={"model": "bench"})
        del acts
        s = ActivationStore.open(path)
        chunks = s.chunks("h")
        random.Random(0).shuffle(chunks)
        bare = zb.Array(s.array("h", 0).path)  # the same array, opened without its checksums
        assert bare.crc32c is None and s.array("h", 0).crc32c is not None

        def checked():
            return sum(s.read_chunk("h", c).nbytes for c in chunks)

        def unchecked():
            return sum(bare.read_rows(c.start, c.stop).nbytes for c in chunks)

        rates = {}
        for cache in ("warm", "evicted"):
            for name, read in (("unchecked", unchecked), ("checked", checked)):
                best = 0.0
                for _ in range(a.repeats):
                    if cache == "evicted":
                        evict(path)
                    else:
                        read()  # into the page cache
                    t: dict = {}
                    with timed(t, "r"):
                        n = read()
                    best = max(best, n / 1e9 / t["r"])
                rates[cache, name] = best
    finally:
        shutil.rmtree(work)
    print(f"{n / 1e9:.2f} GB in {len(chunks)} chunks of {n / len(chunks) / 2**20:.1f} MiB, shuffled; best of {a.repeats}")
    for cache in ("warm", "evicted"):
        u, c = rates[cache, "unchecked"], rates[cache, "checked"]
        print(f"page cache {cache:7s}: unchecked {u:.2f} GB/s, checked {c:.2f} GB/s, ratio checked/unchecked = {c / u:.3f}")


if __name__ == "__main__":
    main()
