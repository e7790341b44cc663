"""A served model as one more backend: a Polygraphy runner over any KServe v2 endpoint (Triton, KServe, MLServer),
through tritonclient, HTTP or gRPC.

    with TritonRunner(RemoteOptions("127.0.0.1:8000", "sr")) as runner:    # activate(): live, model ready
        out = runner.infer({"input": batch})                                   # every output, binary tensors

Connection failures are retried (`retries`, with backoff) and then end in one line, exit 3
(ServerUnreachable); a request the server refuses (a 4xx: wrong dtype, rank, shape) ends in one line, exit 2,
with the server's own message; never a traceback.
"""
from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata

from asvp.errors import AsvpError, MissingDependencyError, first_line
from asvp.runtime.serving.constants import DEFAULT_RETRIES, DEFAULT_TIMEOUT_S, PROTOCOLS
from asvp.runtime.serving.model_config import INSTALL_CLIENT

_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\]\s*")


class ServerUnreachable(MissingDependencyError):
    """The server cannot be reached (refused, timed out, not ready): exit 3."""


class ServerRefused(AsvpError):
    """The server answered with an error for this request (bad input or a model failure): exit 2."""

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class RemoteOptions:
    """Where the served model is and how patiently to ask it."""

    url: str  # host:port (http://, https:// and grpc:// prefixes are read)
    model: str
    protocol: str | None = None  # http | grpc; None: from the URL's scheme, else http
    version: str = ""
    timeout: float = DEFAULT_TIMEOUT_S  # seconds per request
    retries: int = DEFAULT_RETRIES  # further tries after a connection failure
    backoff: float = 0.5  # seconds before the first retry, doubled each time

    def endpoint(self) -> tuple[str, str]:
        """(protocol, host:port)."""
        scheme, sep, rest = self.url.partition("://")
        proto = self.protocol or (("grpc" if scheme == "grpc" else "http") if sep else "http")
        if proto not in PROTOCOLS:
            raise AsvpError(f"unknown protocol {proto!r}: choose http or grpc")
        host = (rest if sep else self.url).rstrip("/")
        if not host or ":" not in host:
            raise AsvpError(f"server URL {self.url!r} needs a host and a port (for example 127.0.0.1:8000)")
        return proto, host


def _module(protocol: str):
    try:
        if protocol == "grpc":
            import tritonclient.grpc as mod
        else:
            import tritonclient.http as mod
    except ImportError as exc:
        raise MissingDependencyError(f"the KServe v2 client needs tritonclient ({first_line(exc)}); "
                                     f"{INSTALL_CLIENT}") from None
    return mod


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    status = str(getattr(exc, "status", lambda: "")() or "")
    return "UNAVAILABLE" in status or "DEADLINE_EXCEEDED" in status or "timed out" in str(exc).lower()


class TritonRunner(BaseRunner):
    """Polygraphy runner for a KServe v2 model: activate() checks the server and the model, infer() sends binary
    tensors and returns every output the model declares, deactivate() closes the connection."""

    def __init__(self, opts: RemoteOptions, name: str | None = None):
        super().__init__(name=name, prefix="runner-triton")
        self.opts = opts
        self.protocol, self.host = opts.endpoint()
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        self.metadata: dict = {}

    @property
    def client(self):
        """This thread's connection (tritonclient's HTTP client must not cross threads), made on first use."""
        c = getattr(self._local, "client", None)
        if c is None:
            mod = _module(self.protocol)
            if self.protocol == "grpc":
                c = mod.InferenceServerClient(self.host)
            else:
                c = mod.InferenceServerClient(self.host, connection_timeout=self.opts.timeout,
                                              network_timeout=self.opts.timeout)
            self._local.client = c
            with self._lock:
                self._clients.append(c)
        return c

    def call(self, what: str, fn, *args, **kwargs):
        """fn(*args), retried on connection failures; every failure one line (ServerUnreachable / ServerRefused)."""
        delay = self.opts.backoff
        for attempt in range(self.opts.retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # tritonclient raises its own and the transport's exceptions
                if not _is_connection_error(exc):
                    status = getattr(exc, "status", lambda: None)()
                    msg = exc.message() if hasattr(exc, "message") and callable(exc.message) else first_line(exc)
                    raise ServerRefused(f"{self.host} refused {what} for model {self.opts.model!r}"
                                        f"{f' ({status})' if status else ''}: {_REQUEST_ID.sub('', first_line(Exception(msg)))}",
                                        status) from None
                if attempt == self.opts.retries:
                    raise ServerUnreachable(f"server {self.host} ({self.protocol}) unreachable for {what} after "
                                            f"{attempt + 1} tries: {first_line(exc)}") from None
                time.sleep(delay)
                delay *= 2

    def activate_impl(self):
        if not self.call("a readiness check", self.client.is_server_live):
            raise ServerUnreachable(f"server {self.host} is not live")
        if not self.call("a readiness check", self.client.is_model_ready, self.opts.model, self.opts.version):
            raise AsvpError(f"server {self.host} has no ready model {self.opts.model!r} (check --model, and the "
                            "server log for a model that failed to load)")
        meta = self.call("the model metadata", self.client.get_model_metadata, self.opts.model, self.opts.version)
        self.metadata = meta if isinstance(meta, dict) else _grpc_dict(meta)

    def get_input_metadata_impl(self):
        meta = TensorMetadata()
        for t in self.metadata.get("inputs", []):
            meta.add(t["name"], dtype=_np_dtype(t["datatype"]), shape=[None if d < 0 else d for d in t["shape"]])
        return meta

    def output_names(self) -> list[str]:
        return [t["name"] for t in self.metadata.get("outputs", [])]

    def infer(self, feed_dict, check_inputs: bool = False, *args, **kwargs):
        """Polygraphy's infer; inputs are checked by the server (its 4xx becomes ServerRefused)."""
        return super().infer(feed_dict, check_inputs, *args, **kwargs)

    def infer_impl(self, feed_dict):
        from tritonclient.utils import np_to_triton_dtype

        mod = _module(self.protocol)
        inputs = []
        for name, arr in feed_dict.items():
            arr = np.ascontiguousarray(arr)
            inp = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            inp.set_data_from_numpy(arr, **({"binary_data": True} if self.protocol == "http" else {}))
            inputs.append(inp)
        kw = {"binary_data": True} if self.protocol == "http" else {}
        outputs = [mod.InferRequestedOutput(n, **kw) for n in self.output_names()]
        extra = {"client_timeout": self.opts.timeout} if self.protocol == "grpc" else {}
        start = time.perf_counter()
        res = self.call("an inference", self.client.infer, self.opts.model, inputs, model_version=self.opts.version,
                        outputs=outputs, **extra)
        self.inference_time = time.perf_counter() - start
        return OrderedDict((n, res.as_numpy(n)) for n in self.output_names())

    def statistics(self) -> dict:
        """The server's inference statistics for this model: inference_count (requests' batch items),
        execution_count (model executions; fewer than requests when the dynamic batcher merged them)."""
        stats = self.call("statistics", self.client.get_inference_statistics, self.opts.model, self.opts.version)
        stats = stats if isinstance(stats, dict) else _grpc_dict(stats)
        rows = stats.get("model_stats", [])
        if not rows:
            return {"inference_count": 0, "execution_count": 0}
        row = rows[0]
        return {"inference_count": int(row.get("inference_count", 0)),
                "execution_count": int(row.get("execution_count", 0)),
                "batch_stats": row.get("batch_stats", [])}

    def config(self) -> dict:
        cfg = self.call("the model config", self.client.get_model_config, self.opts.model, self.opts.version)
        cfg = cfg if isinstance(cfg, dict) else _grpc_dict(cfg)
        return cfg.get("config", cfg)

    def deactivate_impl(self):
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:  # closing a dead connection is not an error worth reporting
                pass
        self._local = threading.local()


def _np_dtype(datatype: str):
    from tritonclient.utils import triton_to_np_dtype

    return triton_to_np_dtype(datatype)


def _grpc_dict(message) -> dict:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)


class ServedFunction:
    """A served model as a function batch -> its first output (the image), for code that takes a callable suspect
    or teacher (the fingerprint verifier, the attacker); `outputs` returns any outputs it serves by name. Batches
    larger than the model's max_batch_size (or a given chunk) are sent in chunks; the connection opens on the first
    call and closes with close() or the `with` block."""

    def __init__(self, opts: RemoteOptions):
        self.runner = TritonRunner(opts)
        self.__name__ = f"{opts.model}@{opts.url}"
        self.output = None
        self.chunk = 0

    def open(self) -> "ServedFunction":
        """Connect (once): check the server and the model, read its input, first output and max_batch_size."""
        if not self.runner.is_active:
            self.runner.activate()
            self.output = self.runner.output_names()[0]
            self.input = self.runner.metadata["inputs"][0]["name"]
            self.chunk = int(self.runner.config().get("max_batch_size", 0) or 0)
        return self

    def served_outputs(self) -> list[str]:
        return self.open().runner.output_names()

    def outputs(self, x: np.ndarray, names: list[str], chunk: int = 0) -> list[np.ndarray]:
        """The named outputs for batch `x`, sent in requests of at most max_batch_size (and `chunk`, if given)."""
        self.open()
        step = min(s for s in (self.chunk, chunk, len(x)) if s)
        parts = [self.runner.infer({self.input: np.ascontiguousarray(x[i:i + step])}) for i in range(0, len(x), step)]
        return [np.concatenate([p[n] for p in parts]) for n in names]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.outputs(x, [self.open().output])[0]

    def close(self) -> None:
        if self.runner.is_active:
            self.runner.deactivate()

    def __enter__(self) -> "ServedFunction":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
