"""Every test under tests/research/ carries the `research` marker: the one-off experiment scripts (research/), run
by `make test` (CI) and left out by `make test-fast`."""
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items):
    # This hook sees the whole session's items, not only this folder's.
    for item in items:
        if Path(item.path).resolve().is_relative_to(HERE):
            item.add_marker(pytest.mark.research)
