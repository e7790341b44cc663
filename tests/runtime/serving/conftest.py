"""The serving environment for the tests that start the real Triton server (`make test` creates it first; created
here when missing, skipped with the reason only when it cannot be created)."""
from __future__ import annotations

import pytest

from asvp.errors import AsvpError
from asvp.runtime.serving import env as serve_env


@pytest.fixture(scope="session")
def serving_env():
    try:
        return serve_env.find_env()
    except AsvpError:
        pass
    try:
        return serve_env.create_env()
    except Exception as exc:  # no network, no wheel for this platform: the tests cannot run here
        pytest.skip(f"the serving environment cannot be created here ({type(exc).__name__}: {exc}); "
                    "run `make serve-env`")
