"""The main job on a bundled teacher: export, nodes (with the absorbability diagnostic), defend, validate, profile,
attack, one report folder.

`make demo` runs `asvp demo`; every step is a call into asvp.api, the same functions the subcommands use. The
demo sits above the API (asvp.api does not import it): `from asvp.demo import run_demo`.
"""
from __future__ import annotations

import time
from pathlib import Path

from asvp import api
from asvp.config import AsvpConfig
from asvp.constants import REFERENCE_STEPS
from asvp.fingerprint import new_key
from asvp.io import write_text_atomic
from asvp.options import Timing
from asvp.runtime import quiet_libraries
from asvp.runtime.attacks.recipes import kind_for_placement
from asvp.runtime.evaluation.report import Section, check_report_dir, md_table, write_report
from asvp.tasks import get_task

PROFILE_SHAPE = {"sr": "1x3x128x128"}  # SR input is the low-resolution image: 128 -> 256 output
DEFAULT_PROFILE_SHAPE = Timing().shape
N_STEPS = 8


def run_demo(task: str = "sr", out: str | Path = "reports/demo", *, config: AsvpConfig | None = None,
             attack_preset: str = "quick", attack_steps: int | None = None, profile_iters: int = 30,
             progress: bool = True, log=print) -> dict:
    quiet_libraries()
    spec = get_task(task)
    cfg = (config or AsvpConfig()).validate()
    out = check_report_dir(out)  # the demo owns this folder: its models there are rewritten on every run
    out.mkdir(parents=True, exist_ok=True)
    clean, defended = out / f"{task}.onnx", out / f"{task}.asvp.onnx"
    steps, t0 = [], time.perf_counter()

    def step(name: str, fn):
        log(f"[{len(steps) + 1}/{N_STEPS}] {name} ...")
        t = time.perf_counter()
        res = fn()
        steps.append({"step": name, "seconds": round(time.perf_counter() - t, 1)})
        return res

    exp = step("export the bundled teacher to ONNX", lambda: api.export(task, clean, force=True))
    nodes = step("list candidate feature nodes", lambda: api.list_nodes(clean))
    absorb = step("absorbability diagnostic at the candidate nodes (attacker's queries)",
                  lambda: api.absorbability(clean, task=task, config=cfg, progress=progress))
    dres = step(f"defend ({cfg.placement}, h={cfg.h}, k={cfg.k} {cfg.k_mode}, tau={cfg.tau})",
                lambda: api.defend(clean, defended, config=cfg, force=True))
    val = step("validate teacher fidelity on held-out images",
               lambda: api.validate(clean, defended, task=task, out=out, progress=progress))
    prof = step("profile latency, defended vs clean interleaved",
                lambda: api.profile(clean, defended, out=out, progress=progress,
                                    timing=Timing(PROFILE_SHAPE.get(task, DEFAULT_PROFILE_SHAPE), warmup=5,
                                                  iters=profile_iters)))
    kind = kind_for_placement(cfg.placement)
    att = step(f"distillation attack ({kind}, {attack_preset} preset)",
               lambda: api.attack(task, clean=clean, defended=defended, kind=kind, preset=attack_preset,
                                  steps=attack_steps, out=out, progress=progress))
    key = new_key()  # a fresh secret per run; written beside the report so `asvp fingerprint verify` can be re-run
    write_text_atomic(out / "fingerprint.key", key + "\n")
    fpc = step("fingerprint check (mark, distil from marked and from clean, verify both)",
               lambda: api.fingerprint_check(clean, defended, task, out, key=key, steps=attack_steps or REFERENCE_STEPS,
                                             progress=progress))
    summary = {
        "task": task, "teacher": spec.teacher_name, "config": cfg.to_dict(), "digest": cfg.digest(),
        "clean_model": str(clean), "defended_model": str(defended), "candidate_nodes": len(nodes),
        "defended_nodes": dres.nodes, "export_parity_max_abs": exp.parity_max_abs_diff,
        "validation_passed": val.passed, "attack_kind": kind, "fingerprint_check_passed": fpc["passed"],
        "steps": steps,
        "absorbability": {"threshold": absorb.threshold,
                          "not_absorbable": [n.name for n in absorb.not_absorbable()],
                          "defended": [n.to_dict() for n in absorb.nodes
                                       if n.name in {d["node"] for d in dres.nodes}]},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    md = ("The whole product on one bundled teacher. Reproduce with `asvp demo --task "
          f"{task} --out {out}` (or `make demo TASK={task}`).\n\n"
          + md_table(["step", "seconds"], [[s["step"], s["seconds"]] for s in steps])
          + f"\nDefended nodes: {', '.join(n['node'] for n in dres.nodes)}."
          + f" Validation verdict: **{'PASS' if val.passed else 'FAIL'}**.\n"
          + "".join(f"\nAbsorbability at {d['name']}: {100 * d['unexplained_heldout']:.2f} % of ASVP's change is not "
                    f"explained by one 1x1 affine map (held-out), subspace variation {d['subspace_variation']:.3f}: "
                    f"predicted **{d['verdict']}** (threshold {100 * absorb.threshold:g} %).\n"
                    for d in summary["absorbability"]["defended"] if d["unexplained_heldout"] is not None))
    report = write_report(out, {"demo": Section("Demo: " + spec.title, data=summary, markdown=md),
                                "absorbability": absorb.to_section(),
                                "fingerprint": Section("Fingerprint check", data=fpc, markdown=fingerprint_markdown(fpc))})
    summary["report"] = str(report)
    summary["attack"] = att
    summary["profile"] = prof
    return summary


def summary_line(res: dict) -> str:
    """One line for people from run_demo's result."""
    return (f"demo finished in {res['seconds']} s; validation {'PASS' if res['validation_passed'] else 'FAIL'}; "
            f"fingerprint check {'PASS' if res['fingerprint_check_passed'] else 'FAIL'}; report: {res['report']}")


def _cost_note(mark: dict) -> str:
    cost = mark.get("cost")
    if not cost:
        return ""
    return (f"; strength derived from the teacher's budget of {cost['max_drop_db']:g} dB: "
            f"{cost['calibration_drop_db']:.3f} dB drop on {cost['calibration_images']}")


def fingerprint_markdown(fpc: dict) -> str:
    """The demo report's fingerprint section from api.fingerprint_check's result."""
    rows = [[r["suspect"], f"{r['statistic']:+.3f}", f"{r['p_value']:.2g}", r["verdict"] if "verdict" in r else
             ("flagged" if r["flagged"] else "not flagged"), f"{r['beta']:+.2f}"] for r in fpc["results"]]
    b = fpc["budget"]
    return (f"The served model was marked with a fresh secret key (id {fpc['key_id']}, file `fingerprint.key`; never "
            f"stored in the model) at {fpc['mark']['node']} ({fpc['mark']['strength_db']:.1f} dB PSNR between marked "
            f"and unmarked outputs on the probes{_cost_note(fpc['mark'])}). Teacher PSNR on held-out images: clean "
            f"{fpc['teacher_psnr']['clean']:.3f} dB, marked {fpc['teacher_psnr']['marked']:.3f} dB (drop "
            f"{fpc['teacher_drop_db']:+.4f} dB). One student was distilled from the marked model and one from the "
            f"clean model ({b['queries']} queries, {b['steps']} steps, seed {b['seed']}); the bias of "
            f"{len(b['reference_seeds'])} reference students of the clean teacher (seeds "
            f"{', '.join(map(str, b['reference_seeds']))}) was removed. Flagged when p < {fpc['alpha']:g} (exact "
            f"p-value: the key is independent of any model that never saw the marked outputs).\n\n"
            + md_table(["suspect", "statistic c", "p-value", "verdict", "beta (share of the mark)"], rows)
            + f"\nCheck **{'PASS' if fpc['passed'] else 'FAIL'}** (expected: the first flagged, the second not). "
            f"Each run draws a new key, so the verdicts are a sample: by construction the clean student is flagged "
            f"in {100 * fpc['alpha']:g} % of runs (its p-value is exact over the key), and a weakly trained student of "
            f"the marked model is sometimes missed (docs/fingerprint.md). A FAIL on one run is not a defect; "
            f"`asvp fingerprint verify` with `fingerprint.key` re-tests the same suspects.\n")


def to_json(res: dict) -> dict:
    """run_demo's result for machines (the attack and profile objects are in the report)."""
    return {k: v for k, v in res.items() if k not in ("attack", "profile")}
