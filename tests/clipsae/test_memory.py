import subprocess
import sys

import pytest

from tests.conftest import ROOT

# A child process allocates 256 MiB, touches it, frees it and reports how much of it stays resident.
_CHILD = """
import sys
from clipsae.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def resident():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20
block = bytearray(256 * 2**20)
held = resident()
del block
print(held - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_stays_for_reuse_once_asked_and_goes_back_otherwise():
    def released(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _CHILD, mode], cwd=ROOT, capture_output=True, text=True, check=True)
        return float(out.stdout)

    assert released("default") > 200  # glibc unmaps a block that large when it is freed
    assert released("keep") < 16


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_malloc_arenas_can_be_limited():
    from clipsae.memory import limit_arenas

    assert limit_arenas(8)  # glibc's default for 64-bit is 8 per core: asking 8 changes nothing in this process


_TRIM_CHILD = """
import ctypes
from clipsae.memory import release_freed_memory
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def resident():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20
# 256 MiB of touched 64 KiB blocks from glibc's heap, each followed by a small block that stays: freed, they
# are holes inside the heap that free() cannot give back. Python's own allocator would put the small blocks
# in arenas of its own and leave the large ones one free stretch at the heap's top, which free() trims itself.
blocks, pins = [], []
for _ in range(4096):
    blocks.append(libc.malloc(64 * 1024))
    ctypes.memset(blocks[-1], 1, 64 * 1024)
    pins.append(libc.malloc(200))
for block in blocks:
    libc.free(block)
before = resident()
assert release_freed_memory()
print(before - resident())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_small_blocks_go_back_to_the_system_when_released():
    out = subprocess.run([sys.executable, "-c", _TRIM_CHILD], cwd=ROOT, capture_output=True, text=True, check=True)
    assert float(out.stdout) > 200  # 15 of each hole's 16 pages
