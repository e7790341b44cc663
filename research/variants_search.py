"""Search for a defence variant that distillation does not absorb (issue 13 item 4; docs/variants.md).

    .venv/bin/python -m research.variants_search --tasks sr lowlight --seeds 5    # cache: --work (default: TMPDIR/asvp-variants)

Two phases, both resumable (everything is cached under --work):

  calibrate  for each task and defence (the paper's ASVP, keyed-h, keyed-rotation; at the automatic node, at three
             nodes, at an early node), the defended teacher's held-out PSNR drop over a rising grid of strengths
             (paper: h; keyed-h: h_max with h = 1; keyed-rotation: angle_max with h = 1). The strongest setting whose
             drop is <= TEACHER_BUDGET_DB is kept: protection is only worth having at that teacher cost.
  attack     for each kept configuration, inline placement, paired students at the `quick` budget (the same queries,
             initial weights and batches for the clean and the defended teacher's student; seeds 0..seeds-1; t
             intervals), one run per attacker kind of runtime.attacks.recipes: `adaptive` (which also trains the
             plain output-distillation student: rows `output` and `adaptive`), `fitnets-1`, `direct`. The adaptive
             attacker filters the outputs (it does not know the key). Clean students are trained once per task,
             kind and node set and shared by every defence (runtime.attacks.task.attack_task's cache).

A configuration protects when, at teacher drop <= 0.1 dB, the BEST attacker's student (the smallest paired drop)
still loses >= 0.1 dB with a 95 % interval excluding 0 (runtime.evaluation.stats.paired_drop's `counts`).

Writes research/results/variants.json (every figure, seeds, commands, wall times) and variants.md.
Single-threaded (the attack harness sets torch and ONNX Runtime to one thread).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx

from asvp.config import AsvpConfig
from asvp.graph_passes import select
from asvp.io import write_text_atomic
from asvp.metrics import psnr_ssim
from asvp.variants import variant_reference
from asvp.runtime.attacks.models import prepare_models
from asvp.runtime.attacks.recipes import PRESETS, get_preset
from asvp.runtime.attacks.task import attack_task
from asvp.runtime.evaluation.absorbability import DEFAULT_CROP, DEFAULT_QUERIES, measure
from asvp.runtime.evaluation.report import md_table
from asvp.runtime.evaluation.served import ServedModel, make_queries, torch_threads as single_thread
from asvp.runtime.evaluation.stats import MIN_DROP_DB
from asvp.tasks import get_task

TEACHER_BUDGET_DB = 0.1
KEY = "asvp-variants-search"  # the key of every keyed model here (the attacker never sees it)
GRIDS = {  # rising strengths; calibration stops at the first one over the teacher budget
    "paper": ("h", [1.05, 1.1, 1.15, 1.2, 1.3, 1.5, 2.0, 3.0]),
    "keyed-h": ("h_max", [1.1, 1.2, 1.3, 1.4, 1.6, 2.0, 3.0, 5.0]),
    "keyed-rotation": ("angle_max", [2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 90.0, 135.0, 180.0]),
}
# (name, variant, node set): node sets "auto" (api.defend's choice), "three" (auto and two earlier candidates),
# "early" (the first candidate with more than k channels)
DEFENCES = [("paper@auto", "paper", "auto"), ("keyed-h@auto", "keyed-h", "auto"),
            ("keyed-rotation@auto", "keyed-rotation", "auto"), ("keyed-rotation@three", "keyed-rotation", "three"),
            ("keyed-rotation@early", "keyed-rotation", "early")]
ATTACKERS = ("adaptive", "fitnets-1", "direct")
RESULTS = Path(__file__).resolve().parent / "results"
WORK = Path(tempfile.gettempdir()) / "asvp-variants"  # the cache both phases resume from


def config_for(variant: str, strength: float) -> AsvpConfig:
    base = AsvpConfig(placement="inline")
    if variant == "paper":
        return base.with_(h=strength)
    if variant == "keyed-h":
        return base.with_(variant=variant, h=1.0, h_max=strength, key=KEY)
    return base.with_(variant=variant, h=1.0, angle_max=strength, key=KEY)


def node_set(clean: Path, which: str) -> list[str] | None:
    if which == "auto":
        return None
    model = onnx.load(str(clean))
    cands = [c for c in select.candidates(model) if c.channels > AsvpConfig().k]
    auto = select.resolve(model, None)[0].name
    if which == "early":
        return [cands[0].name]
    idx = [i for i, c in enumerate(cands) if c.name == auto][0]
    picks = sorted({idx, idx // 3, (2 * idx) // 3})
    return [cands[i].name for i in picks]


def teacher_drop(clean: Path, defended: Path, task: str) -> float:
    """Held-out PSNR drop clean -> defended (attack_task's own evaluation: spec.heldout(), ONNX Runtime)."""
    h_in, h_tgt = get_task(task).heldout()
    x, y = h_in.numpy(), h_tgt.numpy()
    pc = psnr_ssim(ServedModel(clean).query(x, 2)[0], y)[0]
    pd = psnr_ssim(ServedModel(defended).query(x, 2)[0], y)[0]
    return float(pc - pd)


def calibrate(task: str, work: Path, name: str, variant: str, nodes_which: str, log) -> dict:
    wdir = work / task
    clean, _, _ = prepare_models(task, wdir, defended=None, config=AsvpConfig(placement="inline"))
    nodes = node_set(clean, nodes_which)
    field, grid = GRIDS[variant]
    tried, kept = [], None
    for s in grid:
        cfg = config_for(variant, s)
        # the key is not in the digest: name keyed models explicitly so another key can never be reused by mistake
        _, defended, _ = prepare_models(task, wdir, clean, None, cfg, nodes,
                                        defended_name=f"{name}-{field}{s:g}.onnx".replace("@", "_"))
        d = teacher_drop(clean, defended, task)
        tried.append({field: s, "teacher_drop_db": d})
        log(f"  calibrate {task} {name} {field}={s:g}: teacher drop {d:+.3f} dB")
        if d > TEACHER_BUDGET_DB:
            break
        kept = {"strength": s, "defended": str(defended), "teacher_drop_db": d}
    return {"task": task, "defence": name, "variant": variant, "nodes_which": nodes_which, "nodes": nodes,
            "field": field, "tried": tried, "kept": kept}


def absorbability_rows(cal: dict, work: Path, log) -> list[dict]:
    """The diagnostic (runtime.evaluation.absorbability.measure with the variant as the perturbation) at each node of a
    calibrated configuration, on the attacker's DEFAULT_QUERIES query crops (seed 0) of the clean teacher."""
    task = cal["task"]
    clean = work / task / "clean.onnx"
    cfg = config_for(cal["variant"], cal["kept"]["strength"])
    feats = select.resolve(onnx.load(str(clean)), cal["nodes"])
    tensors = [f.output for f in feats]
    queries = make_queries(task, DEFAULT_QUERIES, DEFAULT_CROP, 0)
    _, got = ServedModel(clean, expose=tensors, read=tensors).query(queries, 16)

    def perturb(m):
        return variant_reference(m.unsqueeze(-1), cfg).reshape(m.shape)

    out = []
    for f, x in zip(feats, got):
        r = measure([x[i : i + 16] for i in range(0, len(x), 16)], cfg, perturb)
        out.append({"task": task, "defence": cal["defence"], "node": f.name, "channels": f.channels,
                    "strength": cal["kept"]["strength"], **{k: r[k] for k in ("unexplained", "unexplained_heldout",
                                                                             "rel_change")}})
        log(f"  absorbability {task} {cal['defence']} {f.name}: unexplained (held-out) "
            f"{100 * r['unexplained_heldout']:.2f} %, rel. change {r['rel_change']:.4f}")
    return out


def _paired(row: dict, key: str) -> dict:
    p = row["paired"][key]
    return {k: p[k] for k in ("n", "mean", "sd", "ci_low", "ci_high", "counts")}


def attack_rows(cal: dict, kind: str, seeds: int, work: Path, cache: dict, log, preset: str = "quick") -> list[dict]:
    """Rows (one per attacker: 'adaptive' gives 'output' and 'adaptive') for one calibrated configuration."""
    task = cal["task"]
    clean = work / task / "clean.onnx"
    defended = Path(cal["kept"]["defended"])
    t0 = time.perf_counter()
    r = attack_task(task, clean, defended, kind, get_preset(preset), 0, work / task, progress=False,
                    clean_students=cache, seeds=seeds, interval="t")
    wall = time.perf_counter() - t0
    base = {"task": task, "defence": cal["defence"], "variant": cal["variant"], "nodes": [n["tensor"] for n in r["nodes"]],
            "config": r["config"], "teacher_drop_db": r["drops"]["teacher"]["db"],
            "teacher_clean_psnr": r["teacher"]["clean"]["psnr"], "seeds": r["paired"]["seeds"], "wall_s": round(wall, 1)}
    clean_psnr = [p["clean"]["psnr"] for p in r["paired"]["per_seed"]]
    out = []
    if kind == "adaptive":
        out.append({**base, "attacker": "output", **_paired(r, "student"), "clean_student_psnr": clean_psnr})
        out.append({**base, "attacker": "adaptive (filter, no key)", **_paired(r, "student_adaptive"),
                    "clean_student_psnr": clean_psnr, "filter": r.get("filter")})
    else:
        out.append({**base, "attacker": kind, **_paired(r, "student"), "clean_student_psnr": clean_psnr})
    for o in out:
        log(f"  attack {task} {cal['defence']} {o['attacker']}: teacher {o['teacher_drop_db']:+.3f} dB, student "
            f"{o['mean']:+.3f} [{o['ci_low']:+.3f}, {o['ci_high']:+.3f}] dB ({wall:.0f} s)")
    return out


def verdicts(rows: list[dict]) -> list[dict]:
    """Per (task, defence): the best attacker (smallest mean drop) and whether the configuration protects."""
    out = []
    for key in dict.fromkeys((r["task"], r["defence"]) for r in rows):
        rs = [r for r in rows if (r["task"], r["defence"]) == key]
        best = min(rs, key=lambda r: r["mean"])
        td = rs[0]["teacher_drop_db"]
        protects = td <= TEACHER_BUDGET_DB and all(r["counts"] for r in rs)  # stats.paired_drop's rule, threshold MIN_DROP_DB
        out.append({"task": key[0], "defence": key[1], "teacher_drop_db": td, "attackers": [r["attacker"] for r in rs],
                    "best_attacker": best["attacker"], "best_mean": best["mean"], "best_ci_low": best["ci_low"],
                    "best_ci_high": best["ci_high"], "protects": protects})
    return out


def markdown(result: dict) -> str:
    cal_rows = [[c["task"], c["defence"], ", ".join(c["nodes"] or ["auto"]), c["field"],
                 ", ".join(f"{t[c['field']]:g}: {t['teacher_drop_db']:+.3f}" for t in c["tried"]),
                 f"{c['kept']['strength']:g}" if c["kept"] else "none"] for c in result["calibration"]]
    rows = [[r["task"], r["defence"], r["attacker"], f"{r['teacher_drop_db']:+.3f}",
             f"{r['mean']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]", "yes" if r["counts"] else "no",
             f"{np.mean(r['clean_student_psnr']):.2f} / {r['teacher_clean_psnr']:.2f}", f"{r['wall_s']:.0f}"]
            for r in result["rows"]]
    ver = [[v["task"], v["defence"], f"{v['teacher_drop_db']:+.3f}", ", ".join(v["attackers"]), v["best_attacker"],
            f"{v['best_mean']:+.3f} [{v['best_ci_low']:+.3f}, {v['best_ci_high']:+.3f}]",
            "**yes**" if v["protects"] else "no"] for v in result["verdicts"]]
    return "\n".join([
        f"# Defence variants searched against the attacker ladder ({result['finished_utc']})", "",
        f"Command: `{result['command']}` (attack runs {result['attack_wall_s'] / 60:.1f} min of wall time in all, "
        f"the sum of each run's wall time, on the 2-core machine shared with other jobs, single-threaded; "
        f"calibration and absorbability about 1.5 min more). Preset `{result['preset']['name']}` ({result['preset']['pool']} queries x crop {result['preset']['crop']}, "
        f"{result['preset']['train']['steps']} steps x batch {result['preset']['train']['batch']}), paired seeds "
        f"{result['seeds']}, 95 % t intervals, inline placement, key `{KEY}` (hidden from the attackers).", "",
        "## Calibration: teacher held-out PSNR drop (dB) per strength; the strongest within "
        f"{TEACHER_BUDGET_DB} dB is kept", "",
        md_table(["task", "defence", "nodes", "strength", "strength: teacher drop dB", "kept"], cal_rows), "",
        f"## Absorbability at the kept strength ({DEFAULT_QUERIES} query crops; share of the change M' - M that one "
        "global 1x1 affine map does not explain, fitted on half the crops, measured on the other half)", "",
        md_table(["task", "defence", "node", "C", "strength", "unexplained % (held-out)", "rel. change"],
                 [[r["task"], r["defence"], r["node"], r["channels"], f"{r['strength']:g}",
                   f"{100 * r['unexplained_heldout']:.2f}", f"{r['rel_change']:.4f}"] for r in result["absorbability"]]),
        "",
        "## Paired student drops (dB, mean [95 % CI]); counts = CI excludes 0 and mean >= "
        f"{MIN_DROP_DB} dB", "",
        md_table(["task", "defence", "attacker", "teacher drop", "student drop", "counts",
                  "clean student / clean teacher PSNR", "wall s"], rows), "",
        "## Verdict per configuration (protects = teacher drop <= 0.1 dB and every attacker's drop counts)", "",
        md_table(["task", "defence", "teacher drop", "attackers run", "best attacker", "its student drop",
                  "protects"], ver), "",
        "Calibrated but not attacked (time): " + (", ".join(result["skipped"]) or "none") + ".", ""])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["sr", "lowlight"])
    ap.add_argument("--defences", nargs="+", default=[d[0] for d in DEFENCES], help="names from DEFENCES")
    ap.add_argument("--attackers", nargs="+", default=list(ATTACKERS))
    ap.add_argument("--feature-attackers-on", nargs="*", default=None,
                    help="defences (NAME or TASK:NAME) that get the fitnets-1/direct rungs (default: all)")
    ap.add_argument("--skip", nargs="*", default=[], metavar="TASK:NAME",
                    help="calibrated configurations not to attack (e.g. to fit the time available)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="the students' budget (default quick)")
    ap.add_argument("--results-name", default="variants", help="research/results/NAME.{md,json} (default variants)")
    ap.add_argument("--work", default=str(WORK), help="cache directory (models, answers, results; default %(default)s)")
    ap.add_argument("--calibrate-only", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print, do not write research/results/variants.*")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    logf = open(work / "log.txt", "a")

    def log(msg: str) -> None:
        line = f"{datetime.now(timezone.utc):%H:%M:%S} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    t0 = time.perf_counter()
    defs = [d for d in DEFENCES if d[0] in a.defences]
    cal_path = work / "calibration.json"
    cals = json.loads(cal_path.read_text()) if cal_path.exists() else {}
    rows_path = work / "rows.json"
    done = json.loads(rows_path.read_text()) if rows_path.exists() else {}
    with single_thread():
        calibration = []
        for task in a.tasks:
            for name, variant, which in defs:
                ck = f"{task}|{name}"
                if ck not in cals:
                    cals[ck] = calibrate(task, work, name, variant, which, log)
                    write_text_atomic(cal_path, json.dumps(cals, indent=1))
                calibration.append(cals[ck])
        absorb = []
        for cal in [c for c in calibration if c["kept"]]:
            ak = f"absorb|{cal['task']}|{cal['defence']}|{cal['kept']['strength']}"
            if ak not in cals:
                cals[ak] = absorbability_rows(cal, work, log)
                write_text_atomic(cal_path, json.dumps(cals, indent=1))
            absorb.extend(cals[ak])
        rows = []
        if not a.calibrate_only:
            cache: dict = {}
            for kind in a.attackers:  # attacker-major: the output/adaptive rows of every configuration come first
                for cal in [c for c in calibration if c["kept"]]:
                    if f"{cal['task']}:{cal['defence']}" in a.skip:
                        continue
                    if kind != "adaptive" and a.feature_attackers_on is not None \
                            and not {cal["defence"], f"{cal['task']}:{cal['defence']}"} & set(a.feature_attackers_on):
                        continue
                    rk = f"{cal['task']}|{cal['defence']}|{kind}|{cal['kept']['strength']}|{a.seeds}" \
                        + ("" if a.preset == "quick" else f"|{a.preset}")
                    if rk not in done:
                        done[rk] = attack_rows(cal, kind, a.seeds, work, cache, log, a.preset)
                        write_text_atomic(rows_path, json.dumps(done, indent=1))
                    rows.extend(done[rk])
    wall = time.perf_counter() - t0
    result = {"command": "python -m research.variants_search " + " ".join(argv if argv is not None else sys.argv[1:]),
              "finished_utc": f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "wall_s": round(wall, 1),
              "wall_note": "this invocation only; cached steps (calibration, finished rows) are not re-timed: "
                           "see each row's wall_s",
              "preset": PRESETS[a.preset].to_dict(), "seeds": list(range(a.seeds)), "interval": "t",
              "teacher_budget_db": TEACHER_BUDGET_DB, "key": KEY, "calibration": calibration,
              "absorbability": absorb, "rows": rows, "skipped": a.skip,
              "attack_wall_s": round(sum({(r["task"], r["defence"], r["attacker"] in ("output", "adaptive (filter, no key)")
                                           and "adaptive" or r["attacker"]): r["wall_s"] for r in rows}.values()), 1),
              "verdicts": verdicts(rows)}
    text = markdown(result)
    print(text)
    if not a.no_write:
        RESULTS.mkdir(exist_ok=True)
        write_text_atomic(RESULTS / f"{a.results_name}.json", json.dumps(result, indent=1, default=float))
        write_text_atomic(RESULTS / f"{a.results_name}.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
