"""Intra-op thread counts: decode matmuls on the job's slots, one-off work off the driving thread."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from muxd.engine.executor import on_own_thread
from muxd.engine.model import linear


class Probe(nn.Module):
    """Records the intra-op thread count it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.get_num_threads())
        return x


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_linear_runs_on_the_threads_asked_and_restores_the_callers_count(one_thread):
    probe = Probe()
    x = torch.ones(1)
    assert linear(probe, x, 2) is x
    linear(probe, x, 0)
    assert probe.seen == [2, 1] and torch.get_num_threads() == 1


def test_on_own_thread_returns_the_result_from_another_thread_with_the_callers_count(one_thread):
    result = on_own_thread(lambda: (threading.get_ident(), torch.get_num_threads()))
    assert result[0] != threading.get_ident() and result[1] == 1
    assert on_own_thread(torch.get_num_threads, threads=2) == 2
    assert torch.get_num_threads() == 1


def test_on_own_thread_raises_the_functions_error_in_the_caller():
    def fail():
        raise KeyError("no such model")

    with pytest.raises(KeyError, match="no such model"):
        on_own_thread(fail)
