"""File helpers shared by every command: inputs are checked up front, outputs are written atomically."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from asvp.errors import AsvpError

# Outputs that check_output refused to overwrite (no force): atomic_output creates them exclusively, so that two
# processes that both found the name free cannot both write it (absolute paths; this process only).
_NEW_ONLY: set[str] = set()


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
    directory; a path under a file; a folder that refuses new files; a link that loops; an existing file unless
    force. Without force, atomic_output(path) later creates the file exclusively (a file that appeared meanwhile is
    refused). Creates nothing (a probe file is made and removed at once)."""
    p = Path(path)
    if str(path) == "":
        raise AsvpError(f"{what}: empty path")
    target = _resolve(p, what)
    for src in inputs:
        if src is None:
            continue
        s = Path(src)
        same = (p.exists() and s.exists() and os.path.samefile(p, s)) or target == _resolve(s, "input")
        if same:
            raise AsvpError(f"{what} {p} is the input {s}; asvp never overwrites its input: choose another path")
    if p.is_dir():
        raise AsvpError(f"{what} {p} is an existing directory; give a file path")
    if os.path.lexists(p) and not force:
        raise AsvpError(f"{what} {p} already exists; pass --force (force=True) to overwrite it")
    _check_writable_folder(p.parent, p, what)
    (_NEW_ONLY.discard if force else _NEW_ONLY.add)(os.path.abspath(p))
    return p


def _resolve(p: Path, what: str) -> Path:
    """p with its links followed; a loop of links is bad input (RuntimeError before Python 3.13, OSError after)."""
    try:
        return p.resolve()
    except (RuntimeError, OSError):
        raise AsvpError(f"{what} {p} is a symbolic link that loops; remove the link or choose another path") from None


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, exclusive: bool | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A failure (or Ctrl-C) part-way never leaves a half-written output behind. exclusive: the output must be new,
    and a file that appeared at `path` meanwhile (another asvp writing the same output) is refused, not replaced;
    None (default): exclusive when check_output(path) last ran without force in this process.
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
        key = os.path.abspath(final)
        if exclusive or (exclusive is None and key in _NEW_ONLY):
            _create_exclusive(tmp_path, final)
        else:
            _move(tmp_path, final)
        _NEW_ONLY.discard(key)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _move(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError as exc:
        raise AsvpError(f"cannot write {final}: {exc.strerror or type(exc).__name__}") from None


def _create_exclusive(tmp: Path, final: Path) -> None:
    """Give tmp the name `final` only if nothing has that name: a hard link is created atomically or fails, so of two
    processes racing to a new output exactly one wins. Where the file system has no hard links, an O_EXCL create of
    the final name claims it first (it is empty for the instant before the rename)."""
    try:
        os.link(tmp, final)
        return
    except FileExistsError:
        raise AsvpError(f"output {final} appeared while asvp was working (written by another process?); "
                        "pass --force (force=True) to overwrite it") from None
    except OSError:
        pass  # no hard links here (FAT, some network file systems)
    try:
        os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        raise AsvpError(f"output {final} appeared while asvp was working (written by another process?); "
                        "pass --force (force=True) to overwrite it") from None
    except OSError as exc:
        raise AsvpError(f"cannot write {final}: {exc.strerror or type(exc).__name__}") from None
    _move(tmp, final)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)
