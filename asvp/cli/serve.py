"""`asvp serve REPO`: run the real Triton server on a model repository until Ctrl-C or SIGTERM."""
from __future__ import annotations

import argparse
import json

from asvp.runtime.serving.constants import DEFAULT_STARTUP_TIMEOUT_S, LOOPBACK

DESCRIPTION = (
    "Start Triton Inference Server on REPO (written by asvp triton-repo) and keep it running until Ctrl-C or "
    "SIGTERM, then stop it and its backend processes. The server is a tritonserver on PATH when there is one "
    "(NVIDIA's containers: every backend), else the one the nvidia-pytriton wheel bundles in the serving "
    "environment (.venv-serve; python backend only; --setup creates it). It binds 127.0.0.1 on free ports unless "
    "told otherwise, and prints the HTTP and gRPC endpoints (KServe v2) once every model is ready.")


class ServeArgs:
    """Where the server listens and which binary runs -> ServerOptions."""

    def add(self, parser: argparse.ArgumentParser) -> None:
        p = parser.add_argument_group("server")
        p.add_argument("--host", default=LOOPBACK, help=f"address to bind (default {LOOPBACK}; 0.0.0.0 exposes it)")
        p.add_argument("--http-port", type=int, default=0, help="HTTP port (default: a free one)")
        p.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: a free one)")
        p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (0: free)")
        p.add_argument("--binary", default="auto",
                       help="auto (PATH's tritonserver, else the wheel's), wheel, or a path to tritonserver")
        p.add_argument("--env", metavar="DIR", help="the serving environment (default: ASVP_SERVE_ENV or .venv-serve)")
        p.add_argument("--startup-timeout", type=float, default=DEFAULT_STARTUP_TIMEOUT_S,
                       help=f"seconds to wait for readiness (default {DEFAULT_STARTUP_TIMEOUT_S:g})")
        p.add_argument("--setup", action="store_true", help="create or complete the serving environment first")

    @staticmethod
    def parse(a):
        from asvp.runtime.serving.server import ServerOptions

        for label, port in (("--http-port", a.http_port), ("--grpc-port", a.grpc_port), ("--metrics-port", a.metrics_port)):
            if port is not None and not 0 <= port <= 65535:
                from asvp.errors import AsvpError

                raise AsvpError(f"{label} {port} is not a port number (0 to 65535)")
        return ServerOptions(repository=a.repo, host=a.host, http_port=a.http_port, grpc_port=a.grpc_port,
                             metrics_port=a.metrics_port, binary=a.binary, env=a.env,
                             startup_timeout=a.startup_timeout)


def register(sub) -> None:
    s = sub.add_parser("serve", help="run Triton Inference Server on a model repository (KServe v2, HTTP and gRPC)",
                       description=DESCRIPTION)
    s.add_argument("repo", help="model repository folder (asvp triton-repo)")
    ServeArgs().add(s)
    s.add_argument("--json", action="store_true", help="print the endpoints as one JSON line")
    s.set_defaults(func=run)


def run(a):
    from asvp import api

    def announce(server):
        info = {"http": f"http://{server.http_url}", "grpc": server.grpc_url, "server": server.binary_kind,
                "pid": server.pid()}
        if a.json:
            print(json.dumps(info), flush=True)
        else:
            print(f"serving {a.repo} with {server.binary_kind}\n  HTTP  {info['http']}  (KServe v2: "
                  f"{info['http']}/v2/models/<name>/infer)\n  gRPC  {info['grpc']}\nCtrl-C or SIGTERM stops it.",
                  flush=True)

    rc = api.serve(ServeArgs.parse(a), announce=announce, setup=a.setup)
    print("server stopped", flush=True)
    return rc
