"""User-facing errors. The CLI prints `asvp: error: <message>` on one line and exits with status 2."""


class AsvpError(Exception):
    """A problem with the user's input or environment, reported as one clear line (no traceback)."""

    exit_code = 2


class MissingDependencyError(AsvpError):
    """An optional backend (TensorRT, CUDA, a plugin) is not installed or not loaded."""

    exit_code = 3
