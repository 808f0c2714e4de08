"""How many CPU threads the native pools of this process use: OpenCV's and the BLAS/OpenMP pools (threadpoolctl).

torch's pool is set apart (:func:`tumls_qp.tissue.embeddings.set_cpu_threads`) so that the stages without a
network never import torch. Processes that share the cores (server workers, Dask task threads) each take their
share: more threads than cores makes the work several times slower, not faster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cpu_share", "cpu_threads"]


def cpu_share(sharers: int) -> int:
    """CPU threads for each of ``sharers`` processes or task threads on this machine: its cores divided, at least 1."""
    return max(1, (os.cpu_count() or 1) // max(1, sharers))


@contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Within the block OpenCV and the BLAS/OpenMP pools use at most ``n`` threads; both are restored on exit."""
    import cv2
    from threadpoolctl import threadpool_limits

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        cv2.setNumThreads(before)
