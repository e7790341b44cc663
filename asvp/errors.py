"""User-facing errors. The CLI prints `asvp: error: <message>` on one line and exits with status 2."""
from __future__ import annotations

import re


class AsvpError(Exception):
    """A problem with the user's input or environment, reported as one clear line (no traceback)."""

    exit_code = 2


class MissingDependencyError(AsvpError):
    """An optional backend (TensorRT, CUDA, a plugin) is not installed or not loaded."""

    exit_code = 3


# Terminal control sequences (colours, bold) that libraries put in their messages; a one-line error carries none.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# torch.load(weights_only=True) on a pickled object: the one line that names what it refused.
_UNPICKLER = re.compile(r"WeightsUnpickler error: (.*?)(?: was not an allowed global.*)?$")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty): for one-line errors."""
    text = strip_ansi(str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def detail_line(exc: BaseException, limit: int = 320, line_limit: int = 160) -> str:
    """An exception's whole message on one line: colours removed, its lines joined (each cut at `line_limit`
    characters, the whole at `limit`), so that the detail a library prints under a heading (torch's
    "Error(s) in loading state_dict for Net:" then the missing / unexpected keys or size mismatches) is kept."""
    lines = [_cut(" ".join(ln.split()), line_limit) for ln in strip_ansi(str(exc)).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    for ln in lines[1:]:
        text += (" " if text.endswith(":") else "; ") + ln
    return _cut(text, limit)


def weights_load_detail(exc: BaseException) -> str:
    """Why a weights file did not load, on one line. torch's refusal to unpickle an object (a whole model saved with
    torch.save(model) rather than its state_dict()) is a long advisory text: it is replaced by what was refused and
    the fix; anything else (a state-dict mismatch) is detail_line(exc)."""
    found = [m.group(1) for ln in strip_ansi(str(exc)).splitlines() if (m := _UNPICKLER.search(ln.strip()))]
    if type(exc).__name__ == "UnpicklingError" and found:
        return (f"the file holds pickled Python objects, not a state dict of tensors ({_cut(found[0], 160)}); "
                "asvp loads weights without unpickling code: save model.state_dict() instead")
    return detail_line(exc)
