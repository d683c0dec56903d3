"""Store write speed: PartWriter (chunked zarr, as extract writes) vs numpy.tofile of the same bytes.

Both include fsync, so the figure is what reaches the disk, not the page cache. As in
extract, the per-batch statistics are computed before the writer (on the GPU there) and
handed to it; their CPU cost is printed separately. Goal: ratio >= 0.8.
"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import activation_array, timed  # noqa: E402
from clipsae.store import HookLayout, HookStats, PartWriter, open_root  # noqa: E402


def main():
    a, acts = activation_array(__doc__, lambda ap: ap.add_argument("--batch", type=int, default=64))
    gb = acts.nbytes / 1e9
    work = Path(tempfile.mkdtemp(dir=a.dir))
    t: dict = {}
    try:
        with timed(t, "tofile"):
            with open(work / "raw.bin", "wb") as f:
                acts.tofile(f)
                f.flush()
                os.fsync(f.fileno())
        root = open_root(work / "s.zarr", {"model": "bench", "hooks": {}}, {})
        keys = [str(i) for i in range(a.images)]
        batches = range(0, a.images, a.batch)
        with timed(t, "stats"):
            stats = [HookStats.of(acts[s : s + a.batch]) for s in batches]
        with timed(t, "store"):
            w = PartWriter(root, "p0", "bench", [HookLayout("h", a.tokens, a.d)], "float16")
            for s, st in zip(batches, stats):
                w.append(keys[s : s + a.batch], [0] * len(keys[s : s + a.batch]), {"h": acts[s : s + a.batch]}, {"h": st})
            w.close()
            os.sync()
    finally:
        shutil.rmtree(work)
    print(f"array {acts.shape} float16, {gb:.2f} GB, batches of {a.batch} images")
    print(f"numpy.tofile  {gb / t['tofile']:.2f} GB/s")
    print(f"store write   {gb / t['store']:.2f} GB/s")
    print(f"ratio store/tofile = {t['tofile'] / t['store']:.2f}  (goal >= 0.8)")
    print(f"batch statistics on this CPU {gb / t['stats']:.2f} GB/s (extract computes them on the device)")


if __name__ == "__main__":
    main()
