"""The public API of the serving commands (asvp.api re-exports it): a Triton model repository, the Triton server,
and a served model (any KServe v2 endpoint) as one more backend for validate, profile and fingerprint verify."""
from __future__ import annotations

import os

from asvp.constants import FINGERPRINT_ALPHA
from asvp.runtime.evaluation.served_compare import ServedCheckOptions, compare_served
from asvp.runtime.evaluation.served_load import LoadOptions, run_load
from asvp.runtime.fingerprint.verifier import verify as fingerprint_verify
from asvp.runtime.serving import env as serve_env
from asvp.runtime.serving.client import RemoteOptions, ServedFunction
from asvp.runtime.serving.repository import RepoOptions, write_repository
from asvp.runtime.serving.server import ServerOptions, serve_until_stopped


def triton_repo(model_path: str | os.PathLike, repo: str | os.PathLike, opts: RepoOptions):
    """Write `<repo>/<opts.name>/` for an ONNX model (an engine for the tensorrt_plan form): config.pbtxt
    (schema-checked), the model file, and for the python form its model.py (docs/serving.md)."""
    return write_repository(model_path, repo, opts)


def serve(opts: ServerOptions, *, announce=print, setup: bool = False) -> int:
    """Run Triton on a model repository until Ctrl-C or SIGTERM (127.0.0.1, free ports unless given).
    announce(server) is called once it is ready. setup: create the serving environment first (.venv-serve)."""
    if setup:
        serve_env.create_env(opts.env)
    return serve_until_stopped(opts, announce)


def validate_served(onnx_path: str | os.PathLike, remote: RemoteOptions, opts: ServedCheckOptions | None = None):
    """Compare the model served at remote.url (any KServe v2 endpoint) with its ONNX file run in-process."""
    return compare_served(onnx_path, remote, opts or ServedCheckOptions())


def profile_served(remote: RemoteOptions, opts: LoadOptions | None = None):
    """Client-side latency p50/p90/p99, throughput and errors of a served model at each concurrency level."""
    return run_load(remote, opts or LoadOptions())


def fingerprint_verify_served(remote: RemoteOptions, *, clean, defended, key: str, alpha: float = FINGERPRINT_ALPHA,
                              cache=None, task: str | None = None, references=None):
    """fingerprint_verify with the suspect a served model (any KServe v2 endpoint), queried over the network."""
    with ServedFunction(remote) as fn:
        return fingerprint_verify(fn, clean, defended, key, alpha=alpha, cache=cache, task=task, references=references,
                          name=fn.__name__)
