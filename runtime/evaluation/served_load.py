"""Client-side load on a served model (any KServe v2 endpoint): latency percentiles, throughput and errors at
several concurrencies, and what the server's statistics say about batching.

    rep = run_load(RemoteOptions("127.0.0.1:8000", "sr"), LoadOptions(concurrency=(1, 4, 16), requests=50))

Each of `c` client threads sends `warmup` untimed then `requests` timed requests, cycling through `shapes` (mixed
sizes: the batcher merges only equal ones). Latency is one request's round trip as the client sees it. A request the
server refuses is counted (by status), not raised; an unreachable server ends the run in one line (exit 3).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np

from asvp.errors import AsvpError
from asvp.runtime.engines.shapes import parse_shape
from asvp.runtime.serving.client import RemoteOptions, ServerRefused, ServerUnreachable, TritonRunner

DEFAULT_CONCURRENCY = (1, 4, 16)


@dataclass
class LoadOptions:
    concurrency: tuple = DEFAULT_CONCURRENCY
    requests: int = 50  # timed requests per client
    warmup: int = 2  # untimed requests per client first
    shapes: tuple = ("1x3x64x64",)
    input_name: str | None = None  # default: the model's first input
    seed: int = 0


@dataclass
class LoadLevel:
    concurrency: int
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    throughput_rps: float
    inferences: int  # the server's count of batch items in this level
    executions: int  # the server's count of model executions (fewer: the batcher merged requests)
    error_kinds: dict = field(default_factory=dict)

    def line(self) -> str:
        return (f"  concurrency {self.concurrency:>3}: p50 {self.p50_ms:.1f} ms, p90 {self.p90_ms:.1f} ms, p99 "
                f"{self.p99_ms:.1f} ms, {self.throughput_rps:.1f} req/s, {self.errors} error(s); server: "
                f"{self.inferences} inferences in {self.executions} executions")


@dataclass
class LoadReport:
    url: str
    model: str
    shapes: list
    levels: list

    def to_dict(self) -> dict:
        return {"url": self.url, "model": self.model, "shapes": self.shapes,
                "levels": [lv.__dict__ for lv in self.levels]}

    def summary_lines(self) -> list[str]:
        return [f"served {self.model} at {self.url}, client-side, shapes {', '.join(self.shapes)}:",
                *(lv.line() for lv in self.levels)]


def check_options(opts: LoadOptions) -> None:
    if not opts.concurrency or any(int(c) < 1 for c in opts.concurrency):
        raise AsvpError(f"concurrency levels must be >= 1, got {list(opts.concurrency)}")
    if opts.requests < 1 or opts.warmup < 0:
        raise AsvpError("requests per client must be >= 1 and warmup >= 0")
    for s in opts.shapes:
        parse_shape(s, "input shape")


def _level(runner: TritonRunner, name: str, feeds: list, c: int, opts: LoadOptions) -> LoadLevel:
    latencies: list[float] = []
    kinds: dict = {}
    fatal: list = []
    lock = threading.Lock()

    def client(k: int):
        mine, errs = [], {}
        try:
            for i in range(opts.warmup + opts.requests):
                feed = feeds[(k + i) % len(feeds)]
                start = time.perf_counter()
                try:
                    runner.infer(feed)
                except ServerRefused as exc:
                    errs[str(exc.status)] = errs.get(str(exc.status), 0) + 1
                    continue
                if i >= opts.warmup:
                    mine.append(time.perf_counter() - start)
        except ServerUnreachable as exc:
            fatal.append(exc)
        with lock:
            latencies.extend(mine)
            for key, v in errs.items():
                kinds[key] = kinds.get(key, 0) + v

    before = runner.statistics()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(c)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if fatal:
        raise fatal[0]
    after = runner.statistics()
    ms = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return LoadLevel(c, len(latencies), sum(kinds.values()), *(float(np.percentile(ms, q)) for q in (50, 90, 99)),
                     len(latencies) / wall if wall > 0 else 0.0,
                     after["inference_count"] - before["inference_count"],
                     after["execution_count"] - before["execution_count"], kinds)


def run_load(remote: RemoteOptions, opts: LoadOptions) -> LoadReport:
    check_options(opts)
    rng = np.random.default_rng(opts.seed)
    with TritonRunner(remote) as runner:
        inputs = runner.metadata.get("inputs", [])
        name = opts.input_name or (inputs[0]["name"] if inputs else "input")
        feeds = [{name: rng.random(parse_shape(s, "input shape"), dtype=np.float32)} for s in opts.shapes]
        levels = [_level(runner, name, feeds, int(c), opts) for c in opts.concurrency]
    return LoadReport(remote.url, remote.model, list(opts.shapes), levels)
