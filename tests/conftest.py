"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def torch_single_thread():
    """Tiny trainer models run ~10x faster on one thread than with OpenMP threads competing
    for a small CPU (and timings stay steady); restores the thread count afterwards."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="module")
def torch_single_thread_module():
    """`torch_single_thread` for a whole module, so module-scoped fixtures can train in it."""
    with _one_torch_thread():
        yield
