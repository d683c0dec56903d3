"""The process's allocator: freed memory kept for reuse, so that long work's large temporaries do not page-fault."""

import ctypes
import sys

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def _glibc(name: str, argtypes: tuple):
    """glibc's function ``name`` returning an int, or None where there is none (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


def _mallopt():
    return _glibc("mallopt", (ctypes.c_int, ctypes.c_int))


def limit_arenas(n: int) -> bool:
    """Ask glibc's malloc to use at most ``n`` arenas. By default each thread that allocates may get an arena
    of its own (up to 8 per core), and a server's thread pool keeps a little freed memory in each: the explorer's
    resident memory grew by 280 MiB over 16 clients (docs/benchmarks.md). Returns whether it applied (glibc only)."""
    mallopt = _mallopt()
    return mallopt is not None and mallopt(_M_ARENA_MAX, n) == 1


def release_freed_memory() -> bool:
    """Hand the memory glibc's malloc holds free back to the system (malloc_trim): after a one-off burst of
    temporaries, such as a model's construction and the load of its weights. Returns whether it applied."""
    trim = _glibc("malloc_trim", (ctypes.c_size_t,))
    if trim is None:
        return False
    trim(0)
    return True


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve every block from its heap and never hand freed memory back to the system.

    By default glibc gives each block of over 32 MB a mapping of its own and unmaps it when it is freed, so
    every training step's (B, d_sae) pre-activations and (d_sae, d) gradients come back as fresh pages that
    the kernel faults in and zeroes: on a 2-core CPU about 9 ms for each 38 MB tensor, a tenth of a step
    (docs/benchmarks.md). Kept in the heap, the next step reuses them. The process's resident memory then
    stays at its peak until it exits. Returns whether it applied: only glibc has these knobs; elsewhere
    (macOS, musl) nothing changes.
    """
    mallopt = _mallopt()
    if mallopt is None:
        return False
    # mallopt returns 1 on success; a trim threshold of −1 turns trimming off (mallopt(3)).
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
