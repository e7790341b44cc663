"""Mark a served model with a secret key (`asvp fingerprint mark`): mark_file(clean.onnx, marked.onnx, key).

The mark and the exact test are defined in asvp.fingerprint; the graph edit is graph_passes.mark. By default the
mark is as strong as the teacher's budget allows (--max-drop, defaults.DEFAULT_MAX_DROP_DB): on the owner's
calibration data the key space drops the directions along which the mark would change the teacher's error to
first order (keyspace.key_space), and eps is the largest for which the teacher's pooled PSNR on that data drops by
at most CAL_MARGIN (40 %) of the budget, measured on the marked model itself; the rest of the budget is the
margin for other images.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from asvp.errors import AsvpError
from asvp.fingerprint import DEFAULT_M, check_key, key_direction, key_id, mix_matrix
from asvp.graph_passes.mark import MarkInfo, mark_model
from asvp.metrics import pooled_psnr
from asvp.onnx_utils import image_io, load_model, save_model
from asvp.constants import FINGERPRINT_MAX_DROP_DB as DEFAULT_MAX_DROP_DB
from asvp.runtime.fingerprint.keyspace import CAL_MARGIN, CAL_SEED, KeySpace, calibration_psnr, key_space
from asvp.runtime.fingerprint.probes import task_of


@dataclass
class MarkResult:
    path: str
    mark: dict  # MarkInfo.public()
    key_id: str
    key_dim: int
    probes: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        m = self.mark
        return [f"wrote {self.path}: keyed fingerprint at {m['node']} (C={m['channels']}, m={m['m']}, "
                f"{self.key_dim} key dimensions), eps {m['eps']:.4g}, marked vs clean output {m['strength_db']:.1f} dB "
                f"PSNR on {self.probes} probe(s); key id {self.key_id} (the key is not stored in the model)"] + (
            [f"strength from the teacher's budget {m['cost']['max_drop_db']:g} dB: drop "
             f"{m['cost']['calibration_drop_db']:.4f} dB on {m['cost']['calibration_images']} (target "
             f"{m['cost']['target_db']:g}; {m['cost']['removed_directions']} cost-bearing key directions removed); "
             "measure the held-out cost with `asvp validate`"] if m.get("cost") else []) + (
            [f"key space kept away from the deviations of {m['bias']['students']} quick students of the model "
             f"(seeds {m['bias']['seeds'][0]}-{m['bias']['seeds'][1]}): {m['bias']['removed_directions']} key "
             "directions removed; verify removes no reference span"] if m.get("bias") else [])


def largest_scale_within(drop, target: float, s0: float) -> float:
    """The largest s > 0 with drop(s) <= target (drop(0) = 0, drop grows ~quadratically for large s)."""
    hi = s0
    while drop(hi) <= target and hi < 1e6 * s0:
        hi *= 2
    lo = 0.0
    # the last crossing from below: scan down from hi on a grid, then bisect
    grid = np.linspace(0, hi, 65)[1:]
    ok = [g for g in grid if drop(g) <= target]
    lo = max(ok) if ok else 0.0
    hi = min([g for g in grid if g > lo], default=hi)
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if drop(mid) <= target else (lo, mid)
    return lo


def check_max_drop(max_drop_db) -> float:
    """The teacher's budget in dB, if it is one `mark_file` accepts: (0, 1]."""
    if not (isinstance(max_drop_db, (int, float)) and math.isfinite(max_drop_db) and 0 < max_drop_db <= 1):
        raise AsvpError(f"max drop must be in (0, 1] dB, got {max_drop_db!r}")
    return float(max_drop_db)


def mark_file(model_path, out_path, key: str, *, node: str | None = None, m: int = DEFAULT_M,
              strength_db: float | None = None, max_drop_db: float = DEFAULT_MAX_DROP_DB,
              task: str | None = None, bias_students: int = 0, space: KeySpace | None = None,
              progress: bool = False) -> MarkResult:
    """Mark a (clean or ASVP-defended) model with `key`, written atomically.

    W from the probe features. Strength: by default (strength_db None) derived from the teacher's budget: the key
    space excludes the directions that change the teacher's error to first order on the owner's calibration data
    (cost_neutral_directions), and eps is the largest for which the teacher's pooled PSNR on that data drops by at most
    CAL_MARGIN x `max_drop_db` (measured on the marked model itself). With `strength_db`, eps instead makes the
    marked output `strength_db` PSNR away from the unmarked one on the probes (no cost calibration).
    bias_students > 0: the key space also avoids the directions along which that many quick students of the model
    deviate from it (key_space); `space`: a KeySpace key_space already made for this model with these settings
    (benchmarks reuse one across keys)."""
    t0 = time.perf_counter()
    check_key(key)
    if strength_db is not None and not (isinstance(strength_db, (int, float)) and math.isfinite(strength_db)
                                        and 20 <= strength_db <= 90):
        raise AsvpError(f"strength must be a PSNR in [20, 90] dB, got {strength_db!r}")
    check_max_drop(max_drop_db)
    if not isinstance(m, int) or m < 1:
        raise AsvpError(f"m must be an integer >= 1, got {m!r}")
    model = load_model(model_path)
    image_io(model)
    task = task or task_of(model)
    if strength_db is None and task is None:
        raise AsvpError("calibrating the mark's cost needs the task (--task) for its calibration data, or give a "
                        "fixed --strength")
    ks = space or key_space(model_path, task=task, node=node, m=m, cost=strength_db is None, model=model,
                            bias_students=bias_students, progress=progress)
    r, w, probe, x, basis_eps = ks.r, ks.w, ks.probe, ks.x, ks.basis_eps
    u = key_direction(key, r.shape[1])  # eps, the served mark's scale, is calibrated on the key's own R u
    cost = None
    if strength_db is None:
        xc, yc, bc = ks.xc, ks.yc, ks.bc
        du = ks.key_mark(u)  # the key's mark on the calibration data at eps = basis_eps
        p0 = calibration_psnr(bc, yc)
        target = CAL_MARGIN * max_drop_db
        lin = lambda s: p0 - calibration_psnr(bc + s * du, yc)  # noqa: E731
        eps = basis_eps * largest_scale_within(lin, target, 1.0)
        measure = lambda e: p0 - calibration_psnr(probe.run(xc, mix_matrix(w, r @ u, e)), yc)  # noqa: E731
        got = measure(eps)
        for _ in range(6):  # measured on the marked model itself (the response is only ~linear in eps)
            if got <= target * 1.02:
                break
            eps *= max(0.5, target / got)  # exact if the drop is linear in eps, conservative if quadratic
            got = measure(eps)
        cost = {"max_drop_db": float(max_drop_db), "target_db": round(target, 4),
                "calibration_drop_db": round(got, 4), "calibration_images": f"{len(xc)} training crops "
                f"{list(xc.shape[1:])}, seed {CAL_SEED}", "removed_directions": ks.removed}
    else:
        eps = ks.scale_for(r @ u, strength_db)
    mix = mix_matrix(w, r @ u, eps)
    strength = pooled_psnr(probe.run(x, mix), ks.base)
    feat = ks.feat
    info = MarkInfo(feat.name, feat.output, int(feat.channels), int(m), float(eps), w.tolist(), round(strength, 2),
                    basis_eps=float(basis_eps), equalizer=r.tolist(), cost=cost, bias=ks.bias)
    save_model(mark_model(model, info, mix), out_path, check=False)
    return MarkResult(str(out_path), info.public(), key_id(key), info.key_dim, len(x),
                      round(time.perf_counter() - t0, 1))

