"""`asvp sweep`: teacher drop versus student drop over a grid of ASVP configurations.

For each task and each (h, k, placement, node set), the bundled teacher is defended with api.defend and attacked
(runtime/attacks/task.py) with the attack that can see the perturbation: `output` distillation for inline placement
(the outputs carry it), `feature` distillation for tap placement (the outputs are unchanged, so an output-only
student of a tap-defended model is the clean student, exactly). Students of the clean teacher are trained once
per task and feature set and shared by every configuration. The best configuration is the one with the largest
student drop among those whose teacher drop is <= 0.1 dB; it is reported together with whether its drop exceeds
the measured seed-to-seed noise.
"""
from __future__ import annotations

import hashlib
import itertools
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from asvp.config import AsvpConfig, PLACEMENTS
from asvp.constants import DEFAULT_PRESET
from asvp.errors import AsvpError
from asvp.graph_passes.select import candidates
from asvp.onnx_utils import load_model
from asvp.runtime.attacks.claims import TEACHER_DROP_LIMIT_DB
from asvp.runtime.attacks.models import prepare_models
from asvp.runtime.attacks.recipes import get_preset, kind_for_placement
from asvp.runtime.attacks.task import attack_task
from asvp.runtime.evaluation.absorbability import absorbability
from asvp.runtime.evaluation.report import Section, fmt, md_table, new_figure, write_report
from asvp.runtime.evaluation.served import THREADS, make_queries, torch_threads
from asvp.tasks import get_task

DEFAULT_H = (1.1, 1.5, 3.0)
DEFAULT_K = (2, 4)
DEFAULT_NODES = ("default",)


@dataclass
class SweepResult:
    tasks: list
    preset: str
    seed: int
    rows: list = field(default_factory=list)
    best: dict | None = None  # over all tasks: the config with the largest mean student drop, all teacher drops ok
    best_per_task: dict = field(default_factory=dict)
    out: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        return [sweep_markdown(self),
                f"{len(self.rows)} configuration(s) in {self.seconds:.0f} s" + (f"; report in {self.out}" if self.out else "")]


def _nodes_arg(sel: str):
    """'default' -> None (api.defend's own choice); 'a,b' -> ['a', 'b']."""
    if sel in ("default", "", None):
        return None
    return [s for s in sel.split(",") if s]


def _tag(cfg: AsvpConfig, sel: str) -> str:
    return f"{cfg.placement}-{cfg.digest()}-{hashlib.sha256(sel.encode()).hexdigest()[:6]}"


def pick_best(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["teacher_drop_db"] <= TEACHER_DROP_LIMIT_DB]
    return max(ok, key=lambda r: r["student_drop_db"]) if ok else None


def pick_best_overall(rows: list[dict]) -> dict | None:
    """The configuration (h, k, placement, nodes) whose teacher drop is within the limit on EVERY task swept and
    whose mean student drop is largest."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["h"], r["k"], r["placement"], r["nodes"]), []).append(r)
    n_tasks = len({r["task"] for r in rows})
    cands = []
    for (h, k, pl, nodes), rs in groups.items():
        if len(rs) == n_tasks and all(r["teacher_drop_db"] <= TEACHER_DROP_LIMIT_DB for r in rs):
            cands.append({"h": h, "k": k, "placement": pl, "nodes": nodes,
                          "mean_student_drop_db": float(np.mean([r["student_drop_db"] for r in rs])),
                          "max_teacher_drop_db": float(max(r["teacher_drop_db"] for r in rs)),
                          "tasks_above_noise": [r["task"] for r in rs if r["above_noise"]],
                          "per_task": {r["task"]: {"teacher_drop_db": r["teacher_drop_db"],
                                                   "student_drop_db": r["student_drop_db"],
                                                   "noise_margin_db": r["noise_margin_db"]} for r in rs}})
    return max(cands, key=lambda c: c["mean_student_drop_db"]) if cands else None


def absorbability_at(task: str, clean, tensors: list[str], cfg: AsvpConfig, preset, seed: int, cache: dict) -> dict:
    """The absorbability diagnostic at the defended tensors, on the attacker's queries of this preset and seed; for
    several nodes, the least absorbable one. The shares do not depend on h, so results are cached without it."""
    key = (task, str(clean), tuple(tensors), cfg.k, cfg.k_mode, cfg.tau, preset.pool, preset.crop, seed)
    if key not in cache:
        nodes = [c for c in candidates(load_model(clean)) if c.output in tensors]
        res = absorbability(clean, nodes, make_queries(task, preset.pool, preset.crop, seed), cfg, progress=False)
        rows = [n for n in res.nodes if n.unexplained_heldout is not None]
        worst = max(rows, key=lambda n: n.unexplained_heldout, default=None)
        cache[key] = {"unexplained": worst.unexplained if worst else None,
                      "unexplained_heldout": worst.unexplained_heldout if worst else None,
                      "subspace_variation": worst.subspace_variation if worst else None,
                      "predicted": worst.verdict if worst else "n/a"}
    return cache[key]


def run_sweep(tasks, h=None, k=None, placement=None, nodes=None, preset: str = DEFAULT_PRESET, seed: int = 0, out=None,
              k_mode: str = "adaptive", tau: float = 0.9, steps: int | None = None, pool: int | None = None,
              progress: bool = True, threads: int = THREADS) -> SweepResult:
    """Defend and attack every configuration of the grid on each task; torch runs on `threads` threads meanwhile
    (restored afterwards)."""
    tasks = [get_task(t).name for t in ([tasks] if isinstance(tasks, str) else (tasks or []))]
    if not tasks:
        raise AsvpError("sweep needs at least one --task")
    hs, ks = list(h or DEFAULT_H), list(k or DEFAULT_K)
    pls = list(placement or PLACEMENTS)
    sels = list(nodes or DEFAULT_NODES)
    for pl in pls:
        if pl not in PLACEMENTS:
            raise AsvpError(f"unknown placement {pl!r}; choose from {', '.join(PLACEMENTS)}")
    configs = [AsvpConfig(h=float(hv), k=int(kv), k_mode=k_mode, tau=tau, placement=pl).validate()
               for hv, kv, pl in itertools.product(hs, ks, pls)]
    p = get_preset(preset, steps, pool)
    out_dir = Path(out) if out else None
    t0 = time.perf_counter()
    rows = []
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="asvp-sweep-") as scratch:
        root = out_dir or Path(scratch)
        grid = [(t, cfg, sel) for t in tasks for cfg in configs for sel in sels]
        shared: dict = {}
        absorb: dict = {}
        bar = tqdm(grid, desc=f"sweep ({p.name})", disable=not progress)
        for t, cfg, sel in bar:
            bar.set_postfix(task=t, h=cfg.h, k=cfg.k, placement=cfg.placement)
            work = root / t
            clean, defended, _ = prepare_models(t, work, config=cfg, nodes=_nodes_arg(sel),
                                                defended_name=f"sweep/defended-{_tag(cfg, sel)}.onnx")
            kind = kind_for_placement(cfg.placement)
            r = attack_task(t, clean, defended, kind, p, seed, work if out_dir else None, progress=False,
                            clean_students=shared)
            d = r["drops"]
            ab = absorbability_at(t, clean, [n["tensor"] for n in r["nodes"]], cfg, p, seed, absorb)
            rows.append({"task": t, "h": cfg.h, "k": cfg.k, "k_mode": cfg.k_mode, "tau": cfg.tau,
                         "placement": cfg.placement, "nodes": sel, "defended_nodes": [n["tensor"] for n in r["nodes"]],
                         "kind": kind, "teacher_clean_psnr": r["teacher"]["clean"]["psnr"],
                         "teacher_drop_db": d["teacher"]["db"], "teacher_ssim_drop_pct": d["teacher"]["ssim_pct"],
                         "student_clean_psnr": r["students"]["clean"]["psnr"],
                         "student_drop_db": d["student"]["db"], "student_ssim_drop_pct": d["student"]["ssim_pct"],
                         "noise_margin_db": r["noise_margin_db"],
                         "above_noise": d["student"]["db"] > r["noise_margin_db"],
                         "teacher_ok": d["teacher"]["db"] <= TEACHER_DROP_LIMIT_DB,
                         "absorbability": ab, "seconds": r["seconds"]})
    per_task = {t: pick_best([r for r in rows if r["task"] == t]) for t in tasks}
    res = SweepResult(tasks, p.name, seed, rows, pick_best_overall(rows), per_task,
                      str(out_dir) if out_dir else None, round(time.perf_counter() - t0, 1))
    if out_dir:
        _write(res, p, out_dir)
    return res


def _best_line(b: dict | None, label: str) -> str:
    if b is None:
        return f"- {label}: no configuration kept the teacher drop <= {TEACHER_DROP_LIMIT_DB} dB."
    return (f"- {label}: h={b['h']}, k={b['k']}, placement={b['placement']}, nodes={b['nodes']}: teacher drop "
            f"{b['teacher_drop_db']:+.3f} dB, student drop {b['student_drop_db']:+.2f} dB "
            f"({'above' if b['above_noise'] else 'NOT above'} the noise margin {b['noise_margin_db']:.2f} dB).")


def _pct(v) -> str:
    return fmt(100 * v, ".2f") if v is not None else "-"


def sweep_markdown(res: SweepResult) -> str:
    header = ["task", "h", "k", "placement", "nodes", "attack", "teacher drop dB", "student drop dB",
              "student SSIM drop %", "noise margin dB", "teacher ok", "student drop real",
              "unexplained % (held-out)", "predicted"]
    body = [[r["task"], fmt(r["h"], "g"), r["k"], r["placement"], r["nodes"], r["kind"], fmt(r["teacher_drop_db"], "+.3f"),
             fmt(r["student_drop_db"], "+.2f"), fmt(r["student_ssim_drop_pct"], "+.1f"), fmt(r["noise_margin_db"], ".2f"),
             "yes" if r["teacher_ok"] else "no", "yes" if r["above_noise"] else "no",
             _pct(r.get("absorbability", {}).get("unexplained_heldout")),
             r.get("absorbability", {}).get("predicted", "-")] for r in res.rows]
    lines = [f"Preset `{res.preset}`, seed {res.seed}. Inline configurations are attacked by output distillation, "
             "tap configurations by feature distillation (their outputs are unchanged). Best = largest student drop "
             f"with teacher drop <= {TEACHER_DROP_LIMIT_DB} dB. Unexplained / predicted: the absorbability diagnostic "
             "at the defended node (runtime/evaluation/absorbability.py) on the same queries.", "",
             md_table(header, body), "### Best configuration", ""]
    for t, b in res.best_per_task.items():
        lines.append(_best_line(b, t))
    b = res.best
    if b is None:
        lines.append(f"- all tasks: no single configuration kept the teacher drop <= {TEACHER_DROP_LIMIT_DB} dB on every task.")
    else:
        lines.append(f"- all tasks: h={b['h']}, k={b['k']}, placement={b['placement']}, nodes={b['nodes']}: mean student "
                     f"drop {b['mean_student_drop_db']:+.2f} dB, max teacher drop {b['max_teacher_drop_db']:+.3f} dB, "
                     f"above noise on: {', '.join(b['tasks_above_noise']) or 'no task'}.")
    return "\n".join(lines) + "\n"


def scatter_figure(res: SweepResult):
    fig = new_figure(6.8, 4.6)
    ax = fig.subplots()
    markers = {"inline": "o", "tap": "^"}
    tasks = list(dict.fromkeys(r["task"] for r in res.rows))
    colors = {t: f"C{i}" for i, t in enumerate(tasks)}
    for r in res.rows:
        ax.scatter(r["teacher_drop_db"], r["student_drop_db"], marker=markers[r["placement"]], color=colors[r["task"]],
                   s=36, edgecolors="k" if r["above_noise"] else "none")
        ax.annotate(f"h{r['h']:g} k{r['k']}", (r["teacher_drop_db"], r["student_drop_db"]), fontsize=6,
                    xytext=(3, 2), textcoords="offset points")
    ax.axvline(TEACHER_DROP_LIMIT_DB, color="grey", ls=":", lw=1)
    margin = max((r["noise_margin_db"] for r in res.rows), default=0.1)
    ax.axhspan(-margin, margin, color="grey", alpha=0.15, lw=0)
    for t in tasks:
        ax.scatter([], [], color=colors[t], label=t)
    for pl, m in markers.items():
        ax.scatter([], [], marker=m, color="grey", label=pl)
    lim = max([0.2] + [abs(r["teacher_drop_db"]) for r in res.rows] + [abs(r["student_drop_db"]) for r in res.rows])
    ax.plot([0, lim], [0, lim], ls="--", lw=0.8, color="k", label="student drop = teacher drop")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("teacher PSNR drop (dB)  [dotted: 0.1 dB limit]")
    ax.set_ylabel("student PSNR drop (dB)  [band: largest noise margin; ringed: above its task's margin]")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("ASVP sweep: teacher cost vs student damage", fontsize=9)
    return fig


def _write(res: SweepResult, p, out_dir: Path) -> None:
    write_report(out_dir, {"sweep": Section("ASVP configuration sweep", data={**res.to_dict(), "preset_budget": p.to_dict()},
                                            markdown=sweep_markdown(res), figures={"scatter": scatter_figure(res)})})
