"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest
import torch

# The whole suite runs torch on one intra-op thread, and so do the tools it starts (they
# inherit OMP_NUM_THREADS): the tensors are tiny, and on a 2-core machine shared with other
# jobs torch's default two threads made tests 10-30x slower (a 14 s test module took 107 s).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tests on tiny tensors: as fast, and immune to
    OpenMP threads waiting on each other on a busy shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly without CUDA (the marker alone is enough;
    ``tools/gpu_check.py`` runs them on a GPU with ``pytest -m gpu``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
