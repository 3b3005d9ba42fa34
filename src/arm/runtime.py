"""Process settings for long CPU loops, set by ``arm`` as it starts: keep freed memory, keep compiled matmuls.

With glibc's default malloc, a loop that frees and reallocates a few MB of temporaries per layer per step hands
the memory back to the system and faults it in again every step (``../shared/stack.md``, "Memory allocator"; a
300-step AR fit faulted 5.7M pages with the defaults and 2.4M with the setting below, 0.26 against 0.245 s a step,
experiments/LOG.md, twelfth session). ``make bench`` sets the equivalent ``GLIBC_TUNABLES`` in the environment; a
training command cannot ask its users to, so ``arm`` applies the same two thresholds with ``mallopt`` as it starts:
allocations below 32 MiB come from the heap (not a fresh ``mmap`` each), and the heap is trimmed only above
2 GiB free (``mallopt`` takes an int; the environment form in ``make bench`` says 16 GiB). Memory stays mapped to
the process once used, which is what a long-running trainer wants.

oneDNN (PyTorch's CPU matmuls) JIT-compiles a kernel per matmul shape and caches at most 1,024 of them by
default. An AR batch brings ~2 shapes never seen before (its sequence length and its number of scored tokens
vary), so after ~500 steps the cache evicts kernels that later batches compile again: the AR loop's step crept
from 243 to 285 ms over 1,100 steps with RSS growing 2.5 -> 4.1 GiB, and with a cache of 8,192 it stayed at
234-241 ms, RSS flat at 3.7 GiB from step 600 (experiments/LOG.md, twelfth session). ``grow_onednn_cache`` sets
``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` before oneDNN first reads it (unless the user set it).

Tried and not kept: flushing float denormals to zero (``torch.set_flush_denormal``). AdamW's moments of rows
that get no gradient decay toward float32's denormal range, and a 5,200 x 256 AdamW step on denormal moments is
~7x slower in isolation, but 180 steps resumed from a 2,400-step AR checkpoint ran 0.246 s a step with denormals
and 0.243 s flushed (experiments/LOG.md, twelfth session).

Deliberate simplifications: glibc only (elsewhere nothing changes); an explicit ``GLIBC_TUNABLES`` malloc setting
in the environment wins, as does ``ARM_KEEP_MALLOC=1``, which leaves the allocator alone; the oneDNN setting is
an environment variable, so it reaches only this process and its children, and only if set before the first
CPU matmul.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
"""``mallopt`` parameter numbers from glibc's ``malloc.h``."""

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Bytes; glibc's largest allowed value on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)."""

ONEDNN_CACHE_CAPACITY = 8192
"""oneDNN primitive-cache entries (its default is 1,024)."""

TRIM_THRESHOLD = 2 ** 31 - 1
"""Bytes of free heap top kept before trimming (the largest ``int``)."""


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True when they were set."""
    if platform.libc_ver()[0] != "glibc" or os.environ.get("ARM_KEEP_MALLOC") == "1":
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False  # the user's own setting
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mmap_set = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mmap_set) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def grow_onednn_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> bool:
    """Set oneDNN's primitive-cache capacity (see the module docstring); False when the user already set one."""
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return False
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(capacity)
    return True


def configure_process() -> None:
    """Both settings, for a command-line process about to train or evaluate (before its first tensor)."""
    keep_freed_memory()
    grow_onednn_cache()
