"""What the attacks cache, and under which key: trained students' results (StudentStore) and the cache version.

Cached results are keyed by their inputs and by cache_version(): the package version plus a digest of the source
of the modules that produce them (CACHED_BY). Editing any of those modules makes earlier students and results
stale by construction; no constant has to be bumped by hand.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path

import asvp
from asvp.io import write_text_atomic

# The modules whose code determines a cached student or attack result.
CACHED_BY = (
    "asvp.runtime.evaluation.served",
    "asvp.runtime.evaluation.students",
    "asvp.runtime.attacks.recipes",
    "asvp.runtime.attacks.models",
    "asvp.runtime.attacks.adaptive",
    "asvp.runtime.attacks.distill",
    "asvp.runtime.attacks.claims",
)


def code_digest(modules=CACHED_BY, version: str = asvp.__version__) -> str:
    """SHA-256 (16 hex digits) of `version` and the source files of `modules` (read from disk, not imported)."""
    h = hashlib.sha256(version.encode())
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(name)
        h.update(name.encode())
        h.update(Path(spec.origin).read_bytes())
    return h.hexdigest()[:16]


@functools.cache
def cache_version() -> str:
    """code_digest() of this installation, computed once per process: part of every attack cache key."""
    return code_digest()


class StudentStore:
    """Trained students' results {key: (metrics, record)}, shared across rungs and runs: in memory, and on disk
    (one JSON file per student under `root`) when a root is given, so an interrupted ladder resumes per student."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else None
        self.mem: dict = {}

    @staticmethod
    def _h(key) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def _path(self, key) -> Path | None:
        return self.root / f"student-{self._h(key)}.json" if self.root is not None else None

    def __contains__(self, key) -> bool:
        if self._h(key) in self.mem:
            return True
        path = self._path(key)
        if path is None or not path.exists():
            return False
        try:
            self.mem[self._h(key)] = tuple(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            return False
        return True

    def __getitem__(self, key):
        if key not in self:
            raise KeyError(key)
        return self.mem[self._h(key)]

    def __setitem__(self, key, value) -> None:
        self.mem[self._h(key)] = tuple(value)
        path = self._path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(list(value), default=float))

