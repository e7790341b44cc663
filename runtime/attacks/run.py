"""`asvp attack`: one attack kind on one task or a preset's tasks, resumable, with a report (run_attack); the
planning and the per-task step it shares with the ladder (plan_run, attack_one).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from asvp.config import AsvpConfig
from asvp.constants import DEFAULT_PRESET
from asvp.errors import AsvpError
from asvp.exporter.teachers.bundled import has_weights
from asvp.io import write_text_atomic
from asvp.runtime.attacks.claims import claims, claims_text
from asvp.runtime.attacks.models import prepare_models
from asvp.runtime.attacks.recipes import Preset, get_preset, get_rung
from asvp.runtime.attacks.report import attack_markdown, bar_figure, markdown_table
from asvp.runtime.attacks.store import StudentStore, cache_version
from asvp.runtime.attacks.task import attack_task
from asvp.runtime.evaluation.report import Section, dumps, write_report
from asvp.runtime.evaluation.served import THREADS, file_digest, torch_threads
from asvp.runtime.evaluation.stats import INTERVALS
from asvp.tasks import get_task


@dataclass
class AttackResult:
    kind: str
    preset: str
    seed: int
    tasks: list = field(default_factory=list)  # one dict per task (attack_task)
    skipped: list = field(default_factory=list)  # [{task, reason}]: preset tasks without bundled teacher weights
    claims: list = field(default_factory=list)  # [{claim, holds, evidence}]
    out: str | None = None
    seconds: float = 0.0
    seeds: int = 1  # paired seeds per teacher (seed .. seed + seeds - 1)
    interval: str = "t"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        return [markdown_table(self.tasks) + "".join(f"\nskipped {s['task']}: {s['reason']}" for s in self.skipped)
                + "\n\n" + claims_text(self.claims),
                f"\n{len(self.tasks)} task(s) in {self.seconds:.0f} s" + (f"; report in {self.out}" if self.out else "")]


@dataclass(frozen=True)
class RunPlan:
    """The checked arguments run_attack and the ladder share: which models (given files, or the bundled teacher
    defended with `config` at `nodes`), the preset, the seeds and the interval, and the tasks to run."""

    preset: Preset
    seed: int
    seeds: int
    interval: str
    tasks: tuple
    skipped: tuple = ()
    clean: object = None
    defended: object = None
    config: AsvpConfig | None = None
    nodes: object = None
    remote: object = None  # RemoteOptions: query the defended model at this endpoint (its file is `defended`)


def result_key(task, clean, defended, kind, preset: Preset, seed, seeds: int = 1, interval: str = "t",
               version: str | None = None, remote=None) -> str:
    """The cache key of one task's result: the code version (store.cache_version() unless given), the models'
    digests, the kind, the preset and the seeds."""
    parts = [version or cache_version(), task, file_digest(clean), file_digest(defended), kind, preset.to_dict(), seed]
    if seeds != 1:
        parts += [seeds, interval]
    if remote is not None:  # answers from a server are a different measurement from the file's
        parts += [remote.url, remote.model]
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def attack_one(plan: RunPlan, task: str, kind: str, out_dir: Path | None, stack: contextlib.ExitStack,
               progress: bool, *, preset: Preset | None = None, store=None, name: str | None = None) -> dict:
    """One task of run_attack (or one rung of the ladder: `name` names its result file; `preset` replaces the
    plan's), resumable: a result whose key (result_key) matches is reused; `store` shares trained students.
    Without `out_dir` the models live in a scratch folder that `stack` removes."""
    p = preset or plan.preset
    if out_dir is not None:
        work = out_dir / task
    else:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asvp-attack-")))
    c, d, _ = prepare_models(task, work, plan.clean, plan.defended, plan.config, plan.nodes)
    key = result_key(task, c, d, kind, p, plan.seed, plan.seeds, plan.interval, remote=plan.remote)
    cached = work / f"result-{name or kind}.json"
    if out_dir is not None and cached.exists():
        try:
            prev = json.loads(cached.read_text())
        except (OSError, json.JSONDecodeError):
            prev = {}
        if prev.get("key") == key:
            return prev["result"]
    if store is None:
        store = StudentStore(work / "students" if out_dir is not None else None)
    row = attack_task(task, c, d, kind, p, plan.seed, work if out_dir is not None else None, progress, store,
                      seeds=plan.seeds, interval=plan.interval, remote=plan.remote)
    if out_dir is not None:
        write_text_atomic(cached, dumps({"key": key, "result": row}))
    return row


def check_seeds(seeds) -> int:
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise AsvpError(f"seeds must be an integer >= 1 (paired students per teacher), got {seeds!r}")
    return seeds


def plan_run(task, clean, defended, config, preset: str, steps, pool, seeds, interval: str, seed,
             nodes=None, remote=None) -> RunPlan:
    """Check the arguments that run_attack and the ladder share.

    Without --task the preset's task list is used, and tasks whose teacher is not bundled are skipped and listed
    (not hidden)."""
    p = get_preset(preset, steps, pool)
    seeds = check_seeds(p.seeds if seeds is None else seeds)
    if interval not in INTERVALS:
        raise AsvpError(f"unknown interval {interval!r}; choose one of: {', '.join(INTERVALS)}")
    if not isinstance(seed, int) or seed < 0:
        raise AsvpError(f"seed must be a non-negative integer, got {seed!r}")
    tasks = [get_task(task).name] if task else list(p.tasks)
    if (clean or defended) and len(tasks) != 1:
        raise AsvpError("--clean/--defended need exactly one --task")
    if remote is not None and not (task and clean and defended):
        raise AsvpError("--url needs --task, --clean and --defended: the defended file is the one the server "
                        "serves (its taps and digest), the clean one is the reference")
    if config is not None:
        config.validate()
    skipped = []
    if not task:
        for t in list(tasks):
            if not has_weights(t):
                skipped.append({"task": t, "reason": "no bundled teacher weights"})
                tasks.remove(t)
        if not tasks:
            raise AsvpError("none of the preset's tasks has bundled teacher weights")
    return RunPlan(p, seed, seeds, interval, tuple(tasks), tuple(skipped), clean, defended, config, nodes, remote)


def run_attack(task: str | None = None, clean=None, defended=None, kind: str = "output", preset: str = DEFAULT_PRESET,
               seed: int = 0, out=None, config: AsvpConfig | None = None, nodes=None, steps: int | None = None,
               pool: int | None = None, progress: bool = True, seeds: int | None = None,
               interval: str = "t", threads: int = THREADS, remote=None) -> AttackResult:
    """One attack kind on one task or the preset's tasks (seeds None: the preset's paired seeds); torch runs on
    `threads` threads meanwhile (restored afterwards). remote (RemoteOptions): the attacker's queries go to the
    defended model served there (any KServe v2 endpoint) instead of the `defended` file run in-process."""
    get_rung(kind)
    plan = plan_run(task, clean, defended, config, preset, steps, pool, seeds, interval, seed, nodes, remote)
    p, skipped = plan.preset, list(plan.skipped)
    out_dir = Path(out) if out else None
    t0 = time.perf_counter()
    rows = []
    with torch_threads(threads), contextlib.ExitStack() as stack:
        for t in tqdm(plan.tasks, desc=f"attack ({kind}, {p.name})", disable=not progress or len(plan.tasks) == 1):
            rows.append(attack_one(plan, t, kind, out_dir, stack, progress))
    cl = claims(rows)
    res = AttackResult(kind, p.name, seed, rows, skipped, cl, str(out_dir) if out_dir else None,
                       round(time.perf_counter() - t0, 1), plan.seeds, interval)
    if out_dir:
        write_report(out_dir, {f"attack-{kind}": Section(
            f"Distillation attack: {kind}", data={"preset": p.to_dict(), "seed": seed, "seeds": plan.seeds,
                                                 "interval": interval, "kind": kind, "tasks": rows,
                                                 "skipped": skipped, "claims": cl, "seconds": res.seconds},
            markdown=attack_markdown(p, seed, plan.seeds, interval, kind, rows, skipped, cl),
            figures={"drops": bar_figure(rows)})})
    return res
