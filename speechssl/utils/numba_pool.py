"""numba kernels next to torch: how many threads a parallel kernel gets, and torch's thread
count kept across a call.

numba's OpenMP threading layer starts on the first parallel call and sets the process's
OpenMP thread count, which torch shares: a data-loader worker (one torch thread) would
otherwise run every later torch op on all cores. Callers wrap their kernel calls in
:func:`torch_threads_kept` and size the kernel with :func:`parallel_threads`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

try:  # numba is a dependency; callers fall back to torch when it cannot be imported
    import numba

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised only without numba
    _HAVE_NUMBA = False


def available() -> bool:
    """Whether numba kernels can run here."""
    return _HAVE_NUMBA


def parallel_threads() -> int:
    """Threads for a kernel: torch's thread count, at most numba's pool; when above 1 the
    pool is set to it (call inside :func:`torch_threads_kept`)."""
    pool = int(getattr(numba.config, "NUMBA_NUM_THREADS", 1))
    threads = max(1, min(torch.get_num_threads(), pool))
    if threads > 1:
        numba.set_num_threads(threads)
    return threads


@contextmanager
def torch_threads_kept() -> Iterator[None]:
    """Restore torch's thread count after the block if a numba call changed it."""
    before = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
