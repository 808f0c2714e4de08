"""Thread limits for the native pools (tumls_qp.cpu)."""

import cv2
import pytest
from threadpoolctl import threadpool_info

from tumls_qp import cpu


def _pools() -> set[int]:
    return {p["num_threads"] for p in threadpool_info()}


def test_the_cores_are_divided_among_the_sharers(monkeypatch):
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 8)
    assert [cpu.cpu_share(n) for n in (0, 1, 2, 3, 8, 16)] == [8, 8, 4, 2, 1, 1]
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: None)
    assert cpu.cpu_share(4) == 1


def test_the_limits_hold_inside_the_block_and_are_restored_even_on_error():
    before_cv2, before_pools = cv2.getNumThreads(), _pools()
    with pytest.raises(RuntimeError, match="inside"):
        with cpu.cpu_threads(1):
            assert cv2.getNumThreads() == 1
            assert _pools() == {1}
            raise RuntimeError("inside")
    assert cv2.getNumThreads() == before_cv2
    assert _pools() == before_pools


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_a_bad_thread_count_is_refused(n):
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        with cpu.cpu_threads(n):
            pass
