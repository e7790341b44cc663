"""The real Triton Inference Server, started for a model repository and always stopped.

    with TritonServer(ServerOptions("repo")) as srv:       # 127.0.0.1, free ports, waits until ready
        print(srv.http_url, srv.grpc_url)

Which binary: a full `tritonserver` on PATH when there is one (NVIDIA's containers: every backend, GPUs), else the
one the nvidia-pytriton wheel bundles in the serving environment (runtime.serving.env; Python backend only). The
wheel's binary needs its bundled libraries and the base interpreter's libpython on LD_LIBRARY_PATH, and its Python
backend folder assembled with the stub that matches the serving environment's Python (done in a temporary
workspace, removed on stop).

The server runs in its own process group: stop() sends SIGTERM to the group (the Python backend's stub processes
included), waits, then SIGKILL. A server that exits while starting (a model that fails to load, a port taken)
raises one line, the server log's first error. The log lives in the temporary workspace, removed on stop
(ASVP_KEEP_SERVER_LOG=1 keeps it, for debugging a model that fails to load).
"""
from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from asvp.errors import AsvpError, MissingDependencyError
from asvp.io import require_file
from asvp.runtime.serving.constants import DEFAULT_STARTUP_TIMEOUT_S, LOOPBACK
from asvp.runtime.serving.env import find_env

BINARY = "tritonserver"
_BENIGN = ("CudaDriverHelper", "CUDA driver", "cuda driver")
_ERROR_LINE = re.compile(r"^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] (.*)$")


@dataclass
class ServerOptions:
    """Where and how the server runs (`asvp serve`)."""

    repository: str
    host: str = LOOPBACK
    http_port: int = 0  # 0: a free port
    grpc_port: int = 0
    metrics_port: int | None = None  # None: metrics off; 0: a free port
    binary: str = "auto"  # auto (PATH, else the serving env's wheel) | wheel | a path to tritonserver
    env: str | None = None  # the serving environment (default: ASVP_SERVE_ENV or .venv-serve)
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S
    stop_timeout: float = 15.0
    log_verbose: int = 0


def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def first_error(log_text: str) -> str | None:
    """The message of a Triton log's first model-load failure, else of its first error line (CUDA's "no driver"
    errors of a CPU machine left out: the server runs without a GPU)."""
    errors = []
    for line in log_text.splitlines():
        m = _ERROR_LINE.match(line.strip())
        msg = m.group(1).strip().strip('"') if m else (line.strip() if line.startswith("error:") else None)
        if msg and not any(benign in msg for benign in _BENIGN):
            errors.append(msg.split("\\n")[0].strip())  # the log escapes a Python traceback's newlines: keep line 1
    return next((e for e in errors if "failed to load" in e), errors[0] if errors else None)


class TritonServer:
    """A tritonserver process for one repository: start(), stop(), or a `with` block."""

    def __init__(self, opts: ServerOptions):
        self.opts = opts
        self.proc: subprocess.Popen | None = None
        self.workspace: Path | None = None
        self.http_port = self.grpc_port = 0
        self.metrics_port: int | None = None
        self.binary_kind = ""

    @property
    def http_url(self) -> str:
        return f"{self.opts.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.opts.host}:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workspace / "server.log"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return ""

    def _command(self) -> tuple[list[str], dict]:
        """The server command and environment: PATH's tritonserver or the wheel's, with its backend folder."""
        env = dict(os.environ)
        on_path = shutil.which(BINARY) if self.opts.binary == "auto" else None
        explicit = self.opts.binary not in ("auto", "wheel")
        if explicit or on_path:
            binary = str(require_file(self.opts.binary, "tritonserver binary") if explicit else on_path)
            self.binary_kind = binary
            return [binary], env
        senv = find_env(self.opts.env)
        backends = self.workspace / "backends" / "python"
        backends.mkdir(parents=True)
        for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy(senv.dist / "backends" / "python" / f, backends / f)
        shutil.copy(senv.stub, backends / senv.stub.name)
        libs = [senv.libpython_dir(), str(senv.libs)]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
        self.binary_kind = f"nvidia-pytriton wheel ({senv.path})"
        return [str(senv.server_binary), f"--backend-directory={backends.parent}",
                f"--cache-directory={senv.dist / 'caches'}"], env

    def start(self) -> "TritonServer":
        repo = Path(self.opts.repository)
        if not repo.is_dir():
            raise AsvpError(f"model repository {repo} is not a folder (write one with asvp triton-repo)")
        self.workspace = Path(tempfile.mkdtemp(prefix="asvp-triton-"))
        try:
            cmd, env = self._command()
            h = self.opts.host
            self.http_port = self.opts.http_port or free_port(h)
            self.grpc_port = self.opts.grpc_port or free_port(h)
            cmd += [f"--model-repository={repo.resolve()}", f"--http-address={h}", f"--http-port={self.http_port}",
                    f"--grpc-address={h}", f"--grpc-port={self.grpc_port}", "--exit-timeout-secs=5",
                    f"--log-verbose={self.opts.log_verbose}"]
            if self.opts.metrics_port is None:
                cmd.append("--allow-metrics=false")
            else:
                self.metrics_port = self.opts.metrics_port or free_port(h)
                cmd += [f"--metrics-address={h}", f"--metrics-port={self.metrics_port}"]
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=env, start_new_session=True)
            atexit.register(self.stop)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.opts.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                why = first_error(self.log_text()) or f"exit status {self.proc.returncode}"
                if "unable to find backend library" in why:
                    raise MissingDependencyError(f"{why} (the nvidia-pytriton server has the python backend only: write "
                                                 "the repository with --form python, or serve it with NVIDIA's Triton "
                                                 "container)")
                if "error while loading shared libraries" in self.log_text():
                    raise MissingDependencyError(f"tritonserver cannot start: {why}")
                raise AsvpError(f"tritonserver stopped while starting: {why}")
            if self._ready():
                return
            time.sleep(0.25)
        why = first_error(self.log_text())
        raise AsvpError(f"tritonserver was not ready within {self.opts.startup_timeout:.0f} s"
                        + (f": {why}" if why else ""))

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after stop_timeout; then remove the workspace."""
        proc, self.proc = self.proc, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, self.opts.stop_timeout), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    if sig == signal.SIGTERM:
                        # the group's other members (the Python backend's stubs) go too
                        try:
                            os.killpg(proc.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    break
                except subprocess.TimeoutExpired:
                    continue
        atexit.unregister(self.stop)
        if self.workspace is not None and self.workspace.exists():
            keep = os.environ.get("ASVP_KEEP_SERVER_LOG")
            if not keep:
                shutil.rmtree(self.workspace, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_until_stopped(opts: ServerOptions, announce) -> int:
    """Start the server, call announce(server), and keep it running until Ctrl-C or SIGTERM (then stop it, 0) or
    until it exits by itself (one-line AsvpError with its log's first error)."""
    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    server = TritonServer(opts)
    try:
        server.start()
        announce(server)
        while server.running:
            time.sleep(0.5)
        why = first_error(server.log_text()) or "no error in its log"
        raise AsvpError(f"tritonserver exited by itself: {why}")
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
