"""File helpers shared by every command: inputs are checked up front, outputs are written atomically."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from asvp.errors import AsvpError


def require_file(path: str | os.PathLike, what: str = "file") -> Path:
    p = Path(path)
    if not p.exists():
        raise AsvpError(f"{what} not found: {p}")
    if not p.is_file():
        raise AsvpError(f"{what} is not a regular file: {p}")
    return p


def _nearest_existing(p: Path) -> Path:
    for parent in [p, *p.parents]:
        if os.path.lexists(parent):
            return parent
    return Path(".")


def _check_writable_folder(folder: Path, target: Path, what: str) -> None:
    """`target` (in `folder`, which may not exist yet) can be created: no file in the way, write permission."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise AsvpError(f"{what} {target} cannot be written: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise AsvpError(f"{what} {target} cannot be written: no write permission on {base}")
    try:  # the permission bits do not tell everything (root, read-only or virtual file systems): try it
        fd, probe = tempfile.mkstemp(prefix=".asvp-probe.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise AsvpError(f"{what} {target} cannot be written: {base} refuses new files "
                        f"({exc.strerror or type(exc).__name__})") from None


def check_output_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Refuse, before any work, a folder that cannot be created or written: a file in its place or above it,
    or a folder that refuses new files. Creates nothing (a probe file is made and removed at once)."""
    if str(path) == "":
        raise AsvpError(f"{what}: empty path")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise AsvpError(f"{what} {p} exists and is not a folder")
    _check_writable_folder(p, p, what)
    return p


def check_output(path: str | os.PathLike, inputs=(), *, force: bool = False, what: str = "output") -> Path:
    """Refuse, before any work, an output path that would destroy an input or cannot be written.

    Refused: the output is one of `inputs` (same file, also through links; even with force); an existing
    directory; a path under a file; a folder that refuses new files; an existing file unless force.
    Creates nothing (a probe file is made and removed at once)."""
    p = Path(path)
    if str(path) == "":
        raise AsvpError(f"{what}: empty path")
    for src in inputs:
        if src is None:
            continue
        s = Path(src)
        same = (p.exists() and s.exists() and os.path.samefile(p, s)) or p.resolve() == s.resolve()
        if same:
            raise AsvpError(f"{what} {p} is the input {s}; asvp never overwrites its input: choose another path")
    if p.is_dir():
        raise AsvpError(f"{what} {p} is an existing directory; give a file path")
    if os.path.lexists(p) and not force:
        raise AsvpError(f"{what} {p} already exists; pass --force (force=True) to overwrite it")
    _check_writable_folder(p.parent, p, what)
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A failure (or Ctrl-C) part-way never leaves a half-written output behind.
    """
    final = Path(path)
    if final.is_dir():
        raise AsvpError(f"cannot write {final}: it is an existing directory")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise AsvpError(f"cannot write {final}: {exc.strerror or type(exc).__name__}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        try:
            os.replace(tmp_path, final)
        except OSError as exc:
            raise AsvpError(f"cannot write {final}: {exc.strerror or type(exc).__name__}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)
