"""Load, faults and bad input against the real Triton server (the nvidia-pytriton wheel's, from .venv-serve).

    python -m benchmarks.serve_load [--clients 16] [--requests 200] [--out benchmarks/results/serve-load]

It serves the bundled sr teacher, defended with tap placement, in the python form, on 127.0.0.1, on free ports.
Two entries are served, one with dynamic batching and one without. It then measures:

- load: `--clients` concurrent clients x `--requests` requests of mixed sizes on each entry, with p50/p99 latency,
  throughput, errors (target 0), and the server's executions against its inferences;
- server memory: the resident set of the server's process group (server and Python backend stubs), after warm-up
  and after the load;
- malformed requests (wrong dtype, rank and channel count, a zero-size dimension, a size above the limit): the HTTP
  status of each, and whether the next good request succeeds;
- a repository with a corrupt model: the one-line message asvp serve gives;
- the server killed mid-run: how a client under load (`asvp profile --url`, in its own process) ends.

Writes JSON and Markdown (atomically). It runs on a CPU machine; no GPU or TensorRT backend is involved.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from benchmarks.provenance import ROOT, commit

from asvp import api
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.io import write_text_atomic
from asvp.runtime.evaluation.served_load import LoadOptions, run_load
from asvp.runtime.serving.client import RemoteOptions, TritonRunner
from asvp.runtime.serving.repository import RepoOptions, write_repository
from asvp.runtime.serving.server import ServerOptions, TritonServer

MIXED = ("1x3x32x32", "1x3x48x48", "1x3x64x64", "2x3x32x32")
MAX_SIDE = 256
MALFORMED = {
    "wrong dtype": ("FP64", [1, 3, 8, 8]),
    "wrong rank": ("FP32", [1, 8, 8]),
    "wrong channel count": ("FP32", [1, 2, 8, 8]),
    "zero-size dimension": ("FP32", [1, 3, 0, 8]),
    f"size above the limit ({MAX_SIDE})": ("FP32", [1, 3, MAX_SIDE + 1, 8]),
}


def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the group (the server and its backend stubs), in MB."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5 of /proc/PID/stat: the process group
                status = (stat.parent / "status").read_text()
                total += int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmRSS:")))
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return total / 1024


def post(url: str, model: str, dtype: str, shape: list) -> int:
    n = 1
    for d in shape:
        n *= d
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": dtype, "data": [0.5] * n}]}
    req = urllib.request.Request(f"http://{url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def malformed(url: str) -> list[dict]:
    rows = []
    for what, (dtype, shape) in MALFORMED.items():
        status = post(url, "sr", dtype, shape)
        rows.append({"request": what, "status": status, "next_good_request": post(url, "sr", "FP32", [1, 3, 8, 8])})
    return rows


def corrupt_model(model: str, work: Path) -> str:
    repo = work / "corrupt"
    write_repository(model, repo, RepoOptions(name="broken"))
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    try:
        TritonServer(ServerOptions(str(repo))).start()
    except AsvpError as exc:
        return str(exc).replace(str(work), "<tmp>")
    return "the server started (unexpected)"


def kill_mid_run(url: str, server: TritonServer) -> dict:
    """A client under load in its own process; the server is killed (SIGKILL, its whole group) under it."""
    cmd = [sys.executable, "-m", "asvp.cli", "profile", "--url", url, "--model", "sr", "--concurrency", "4",
           "--iters", "100000", "--warmup", "0", "--shape", "1x3x32x32"]
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TritonRunner(RemoteOptions(url, "sr")) as probe:
        start = probe.statistics()["inference_count"]
        for _ in range(600):  # until the client's requests are arriving (its process takes a while to start)
            if probe.statistics()["inference_count"] >= start + 20 or client.poll() is not None:
                break
            time.sleep(0.1)
    os.killpg(server.pid(), signal.SIGKILL)
    out, err = client.communicate(timeout=300)
    server.stop()
    return {"client_exit": client.returncode, "stderr_lines": len(err.strip().splitlines()),
            "stderr": err.strip(), "stdout_empty": not out.strip()}


def run(clients: int, requests: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="asvp-serve-load-") as tmp:
        work = Path(tmp)
        clean = api.export("sr", work / "sr.onnx").path
        model = api.defend(clean, work / "sr-tap.onnx", config=AsvpConfig(placement="tap")).path
        repo = work / "repo"
        write_repository(model, repo, RepoOptions(name="sr", max_side=MAX_SIDE))
        write_repository(model, repo, RepoOptions(name="sr_nobatch", dynamic_batching=False, max_side=MAX_SIDE))
        server = TritonServer(ServerOptions(str(repo))).start()
        try:
            load = LoadOptions(concurrency=(clients,), requests=requests, warmup=2, shapes=MIXED)
            run_load(RemoteOptions(server.http_url, "sr"), LoadOptions(concurrency=(2,), requests=5, shapes=MIXED))
            rss_before = group_rss_mb(server.pid())
            batched = run_load(RemoteOptions(server.http_url, "sr"), load).levels[0]
            rss_after = group_rss_mb(server.pid())
            unbatched = run_load(RemoteOptions(server.http_url, "sr_nobatch"), load).levels[0]
            bad = malformed(server.http_url)
            killed = kill_mid_run(server.http_url, server)
        finally:
            server.stop()
        corrupt = corrupt_model(model, work)
    return {"commit": commit(), "clients": clients, "requests_per_client": requests, "shapes": list(MIXED),
            "server": "tritonserver 2.51 (nvidia-pytriton wheel), python backend, CPU",
            "load": {"dynamic batching": batched.__dict__, "no batching": unbatched.__dict__},
            "server_rss_mb": {"after warm-up": round(rss_before, 1), "after load": round(rss_after, 1)},
            "malformed": bad, "corrupt_model": corrupt, "killed_mid_run": killed}


def markdown(r: dict, heading: str = "#") -> str:
    lines = [f"{heading} Serving under load, faults and bad input (`benchmarks/serve_load.py`, commit {r['commit']})", "",
             f"{r['server']}; the bundled sr teacher defended (tap placement), python form; {r['clients']} clients x "
             f"{r['requests_per_client']} requests, sizes {', '.join(r['shapes'])} in rotation; client-side times "
             "on a shared 2-core CPU machine.", "",
             "Inferences count batch items (a 2x3x32x32 request is two); fewer executions than inferences means the "
             "batcher merged requests.", "",
             "| entry | requests | errors | p50 ms | p99 ms | req/s | server executions / inferences |",
             "|---|---|---|---|---|---|---|"]
    for name, lv in r["load"].items():
        lines.append(f"| {name} | {lv['requests']} | {lv['errors']} | {lv['p50_ms']:.1f} | {lv['p99_ms']:.1f} | "
                     f"{lv['throughput_rps']:.1f} | {lv['executions']} / {lv['inferences']} |")
    rss = r["server_rss_mb"]
    lines += ["", f"Server memory (server and backend stubs): {rss['after warm-up']} MB after warm-up, "
              f"{rss['after load']} MB after the batched load.", "",
              "| malformed request | HTTP status | next good request |", "|---|---|---|"]
    lines += [f"| {m['request']} | {m['status']} | {m['next_good_request']} |" for m in r["malformed"]]
    k = r["killed_mid_run"]
    lines += ["", f"Corrupt model: `asvp: error: {r['corrupt_model']}`", "",
              f"Server killed mid-run: the client exited {k['client_exit']} with {k['stderr_lines']} line(s) on "
              f"stderr (`{k['stderr']}`), nothing on stdout.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=200, help="requests per client (default 200)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve-load"),
                    help="output path without suffix (.json and .md are written)")
    a = ap.parse_args(argv)
    r = run(a.clients, a.requests)
    write_text_atomic(a.out + ".json", json.dumps(r, indent=2) + "\n")
    write_text_atomic(a.out + ".md", markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
