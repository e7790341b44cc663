"""SIGTERM as an interruption, so that an export stopped by `kill` (or a job scheduler) cleans up after itself.

Python's default action for SIGTERM ends the process at once: no `finally`, no context manager's exit, so the
exporters' temporary folder and the output's temporary file stay behind. Inside `terminate_as_interrupt()` a
SIGTERM raises `Terminated` (a KeyboardInterrupt: the CLI reports "interrupted", exit 130) in the main thread,
which unwinds through every cleanup. The previous handler is back when the block ends.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM."""


def _raise_terminated(signum, _frame):
    raise Terminated(f"terminated by signal {signum}")


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated inside the block (main thread only: elsewhere Python cannot set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
