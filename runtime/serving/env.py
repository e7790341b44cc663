"""The serving environment: where the Triton server and its Python backend's interpreter packages live.

The nvidia-pytriton wheel bundles a real `tritonserver` (2.51) with its Python backend. That backend's model code
runs in a separate stub process whose packages must have numpy < 2 (under numpy 2, pb_utils.Tensor refuses outputs
and from_dlpack returns wrong values), while asvp's own environment uses numpy 2. So the server and the backend run
from their own virtual environment, `.venv-serve` at the repository root by default (ASVP_SERVE_ENV names another):
nvidia-pytriton, numpy < 2, and what asvp's ONNX Runtime session imports (asvp itself, installed without its
other dependencies, onnxruntime, onnxruntime-extensions for the AsvpPerturb op, torch CPU because asvp.method
imports it). The list is pyproject's `serve` extra; `python -m asvp.runtime.serving.env [DIR]` (make serve-env)
creates the environment. Clients (asvp serve, validate --url) run in the main environment.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from asvp.errors import MissingDependencyError

ENV_VAR = "ASVP_SERVE_ENV"
DEFAULT_DIR = ".venv-serve"
SERVE_EXTRA = "serve"
ROOT = Path(__file__).resolve().parents[2]  # the source checkout (editable install); holds pyproject.toml


def default_env_path() -> Path:
    return Path(os.environ.get(ENV_VAR) or ROOT / DEFAULT_DIR)


def serve_requirements() -> list[str]:
    """pyproject's `serve` extra (the installed distribution's metadata), without the extra marker."""
    try:
        reqs = metadata.requires("asvp") or []
    except metadata.PackageNotFoundError:
        reqs = []
    out = []
    for r in reqs:
        req, _, marker = r.partition(";")
        if re.search(r"extra\s*==\s*['\"]" + SERVE_EXTRA + "['\"]", marker):
            out.append(req.strip())
    return out


@dataclass(frozen=True)
class ServeEnv:
    """A serving environment found on disk: its interpreter, the wheel's server and backend files."""

    path: Path
    python_version: str  # "3.11"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def site_packages(self) -> Path:
        return self.path / "lib" / f"python{self.python_version}" / "site-packages"

    @property
    def dist(self) -> Path:
        """The wheel's tritonserver distribution (bin/, backends/, caches/, python_backend_stubs/)."""
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def server_binary(self) -> Path:
        return self.dist / "bin" / "tritonserver"

    @property
    def stub(self) -> Path:
        return self.dist / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"

    @property
    def libs(self) -> Path:
        """Shared libraries the wheel bundles (libcudart and others the server links)."""
        return self.site_packages / "nvidia_pytriton.libs"

    def libpython_dir(self) -> str:
        """The base interpreter's LIBDIR: the stub links libpython, and a pyenv-built Python keeps it there."""
        out = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
                             capture_output=True, text=True, timeout=60)
        return out.stdout.strip()


def _version_of(path: Path) -> str | None:
    cfg = path / "pyvenv.cfg"
    if not cfg.is_file():
        return None
    m = re.search(r"^version(?:_info)?\s*=\s*(\d+)\.(\d+)", cfg.read_text(), re.M)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def find_env(path=None) -> ServeEnv:
    """The serving environment at `path` (default: ASVP_SERVE_ENV or .venv-serve); MissingDependencyError (exit 3)
    with the command that creates it when it is absent or incomplete."""
    p = Path(path) if path else default_env_path()
    hint = f"create it with: make serve-env (or {Path(sys.executable).name} -m asvp.runtime.serving.env {p})"
    version = _version_of(p)
    if version is None:
        raise MissingDependencyError(f"no serving environment at {p}; {hint}")
    env = ServeEnv(p, version)
    for need in (env.server_binary, env.stub):
        if not need.exists():
            raise MissingDependencyError(f"the serving environment {p} has no {need.name} (nvidia-pytriton missing, "
                                         f"or no Python backend stub for Python {version}); {hint}")
    return env


def create_env(path=None, *, python: str = sys.executable, quiet: bool = True) -> ServeEnv:
    """Create (or complete) the serving environment: a venv, the `serve` extra (with constraints.txt), and asvp
    from this checkout without its dependencies. Idempotent: pip skips what is installed."""
    p = Path(path) if path else default_env_path()
    reqs = serve_requirements()
    if not reqs:
        raise MissingDependencyError("asvp's `serve` extra is not in the installed metadata; reinstall asvp "
                                     "(pip install -e .) from a checkout")
    q = ["-q"] if quiet else []
    if _version_of(p) is None:
        subprocess.run([python, "-m", "venv", str(p)], check=True)
    pip = [str(p / "bin" / "python"), "-m", "pip", "install", *q]
    constraints = ROOT / "constraints.txt"
    cons = ["-c", str(constraints)] if constraints.is_file() else []
    subprocess.run([*pip, *cons, *reqs], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    return find_env(p)


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"serving environment ready: {create_env(target).path}")
