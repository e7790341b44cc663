"""The served-model plumbing (runtime/evaluation/served.py): thread counts are scoped, never left changed."""
from __future__ import annotations

import pytest
import torch

from asvp.errors import AsvpError
from asvp.runtime.evaluation.served import make_queries, torch_threads


def test_torch_threads_is_scoped_and_restored_on_error():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(AsvpError, match="threads must be"):
        with torch_threads(0):
            pass


def test_queries_are_deterministic_per_seed():
    a, b = make_queries("sr", 3, 32, 5), make_queries("sr", 3, 32, 5)
    assert a.shape == (3, 3, 16, 16) and (a == b).all() and not (a == make_queries("sr", 3, 32, 6)).all()
