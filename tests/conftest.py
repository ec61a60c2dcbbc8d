"""Shared pytest fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture
def torch_single_thread():
    """Tiny trainer models run ~10x faster on one thread than with OpenMP threads competing
    for a small CPU (and timings stay steady); restores the thread count afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
