"""Shared by the benchmark scripts: where results came from (the commit they ran at, input files as reports show
them) and how their comma-separated arguments are read."""
from __future__ import annotations

import subprocess
from pathlib import Path

from asvp.errors import AsvpError

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The short hash of HEAD, or "unknown" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def shown(path) -> str:
    """A path as reports show it: relative to the repository when inside it."""
    full = Path(path).resolve()
    return str(full.relative_to(ROOT)) if full.is_relative_to(ROOT) else str(path)


NOUNS = {int: "integers", float: "numbers", str: "names"}


def parse_list(text: str, kind, what: str) -> list:
    """A comma-separated argument as a list of `kind` (int, float or str); one-line AsvpError when an item is not
    one, or when the list is empty. `what` names the option in the error."""
    try:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AsvpError(f"{what}: not a comma-separated list of {NOUNS.get(kind, 'values')}: {text!r}") from None
    if not items:
        raise AsvpError(f"{what}: empty")
    return items
