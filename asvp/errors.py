"""User-facing errors. The CLI prints `asvp: error: <message>` on one line and exits with status 2."""


class AsvpError(Exception):
    """A problem with the user's input or environment, reported as one clear line (no traceback)."""

    exit_code = 2


class MissingDependencyError(AsvpError):
    """An optional backend (TensorRT, CUDA, a plugin) is not installed or not loaded."""

    exit_code = 3


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
