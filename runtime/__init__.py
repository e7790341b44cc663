"""asvp.runtime: build, run and validate defended models (ONNX Runtime, TensorRT through Polygraphy)."""
import os
import sys

# ONNX Runtime's C++ log level for the sessions asvp creates: FATAL only. Its errors also come back as exceptions,
# which asvp reports on its one line; printed first, they would break that line (coloured, several lines).
_ORT_FATAL = 4


def quiet_libraries() -> None:
    """Silence what Polygraphy and ONNX Runtime print on their own; asvp reports what matters itself (a bad input is
    one line on stderr). Called by the entry points (the CLI's main, the demo, the memory probe), not on import:
    importing asvp.runtime changes no logger and loads neither library.

    Polygraphy logs every session creation at INFO and a mismatched input at WARNING and CRITICAL (the CRITICAL
    message is also the exception asvp reports). ONNX Runtime writes to file descriptor 2 from C++, past Python's
    sys.stderr: on import, a warning when it cannot persist its telemetry device ID (a user without a writable
    HOME), so it is imported with descriptor 2 on /dev/null."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.CRITICAL + 1
    if "onnxruntime" not in sys.modules:
        _import_without_stderr("onnxruntime")
    import onnxruntime

    onnxruntime.set_default_logger_severity(_ORT_FATAL)


def _import_without_stderr(name: str) -> None:
    """Import a module with file descriptor 2 pointed at /dev/null (a Python exception still propagates)."""
    import importlib

    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        importlib.import_module(name)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
