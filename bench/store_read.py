"""Shuffled chunk reads through ActivationStore vs a sequential raw read of the same chunk files.

Both start with the files evicted from the page cache. Goal: ratio >= 0.9.
"""

import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import activation_array, evict, timed  # noqa: E402
from clipsae.store import ActivationStore, write_store  # noqa: E402


def main():
    a, acts = activation_array(__doc__)
    work = Path(tempfile.mkdtemp(dir=a.dir))
    t: dict = {}
    try:
        path = work / "s.zarr"
        write_store(path, {"h": acts}, keys=[str(i) for i in range(a.images)], attrs={"model": "bench"})
        del acts
        files = sorted((path / "parts" / "part-00000" / "acts" / "h" / "c").rglob("*"))
        files = [f for f in files if f.is_file()]
        evict(path)
        with timed(t, "raw"):
            raw = sum(len(f.read_bytes()) for f in files)
        evict(path)
        s = ActivationStore.open(path)
        with timed(t, "store"):
            got = sum(x.nbytes for _, x in s.iter_chunks("h", shuffle=True, seed=0))
        assert got <= raw  # the last chunk file is stored padded to a full chunk
        n_chunks = len(s.chunks("h"))
    finally:
        shutil.rmtree(work)
    gb = raw / 1e9
    print(f"{gb:.2f} GB in {n_chunks} chunks of {raw / n_chunks / 2**20:.1f} MiB, page cache evicted before each")
    print(f"raw sequential read   {gb / t['raw']:.2f} GB/s")
    print(f"store shuffled chunks {got / 1e9 / t['store']:.2f} GB/s")
    print(f"ratio store/raw = {(got / t['store']) / (raw / t['raw']):.2f}  (goal >= 0.9)")


if __name__ == "__main__":
    main()
