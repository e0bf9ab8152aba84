"""glibc malloc settings for CPU runs of the `dico` command.

PyTorch's CPU tensors come from malloc. glibc serves blocks above a moving threshold (128 KiB rising to at most
32 MiB) with fresh mmaps and hands freed heap tops back to the kernel, so a training step, whose activations are all
alive at once and all freed at the end, gets new pages every step, and the kernel zero-fills each 4 KiB page on
first touch. Measured for DiCo-S at batch 16, one thread: ~400k page faults and ~0.7 s of a 3.7 s fp32 training
step (BENCHMARKS.md). A fixed 32 MiB mmap threshold and no heap trimming keep those pages in the process, so the
kernel never zero-fills them again: the usual advice for PyTorch on CPU (jemalloc/tcmalloc do the same by other
means).

Process-wide, so only the `dico` command applies it (never `import dico`); `DICO_MALLOC_TUNING=0` turns it off,
and a GLIBC_TUNABLES that sets malloc options wins.
"""

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's maximum for the mmap threshold on 64-bit
TRIM_NEVER = -1  # mallopt(3): "-1 disables trimming completely"

_applied = False


def tune_glibc_malloc() -> bool:
    """Apply the settings above once per process; True when they are in effect."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("DICO_MALLOC_TUNING", "1") == "0":
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_NEVER))
    return _applied


def malloc_tuned() -> bool:
    return _applied
