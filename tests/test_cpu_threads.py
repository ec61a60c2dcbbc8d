"""Default torch threads on CPU: the cores the DataLoader workers leave."""

import os

import pytest
import torch

from bionas.trainer.session import cpu_threads


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_cpu_with_workers_leaves_them_their_cores_and_keeps_at_least_one(two_cores):
    assert cpu_threads(torch.device("cpu"), 1) == 1
    assert cpu_threads(torch.device("cpu"), 4) == 1


def test_without_workers_or_on_cuda_torch_decides(two_cores):
    assert cpu_threads(torch.device("cpu"), 0) is None
    assert cpu_threads(torch.device("cuda"), 2) is None


def test_an_omp_num_threads_setting_is_left_to_torch(two_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as torchrun sets it for each rank
    assert cpu_threads(torch.device("cpu"), 1) is None
