"""How training uses the machine's memory allocator: freed tensor memory kept for reuse instead of given back."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's largest: blocks below it come from the reusable heap, not fresh mmaps
TRIM_THRESHOLD = 1 << 30  # free memory at the top of the heap kept for reuse, up to 1 GiB
TOP_PAD = 64 << 20  # the heap grows in steps of 64 MiB


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse in this process; True where it took effect (Linux, glibc).

    PyTorch on CPU allocates and frees a few hundred KiB to several MiB per tensor, many times a step. glibc
    serves blocks above 128 KiB (its default, raised dynamically) with ``mmap`` and gives them back to the
    kernel on ``free``, so the next step's tensors fault their pages in afresh: the kernel zeroes every page
    again, and on a virtual machine each first touch can also exit to the hypervisor (benchmarks/README.md
    has the share of CPU time this took). Raising the mmap threshold to glibc's maximum and keeping up to
    1 GiB of freed heap makes the same allocations reuse memory already mapped. The numbers computed do not
    change. Called at the start of every fold, final model and TAPT run (once per process).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries without mallopt: leave the allocator as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting; the allocator keeps its defaults")
    return ok
