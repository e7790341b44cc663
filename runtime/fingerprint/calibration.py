"""Calibration of the test (`asvp fingerprint calibrate`): reference students of the clean teacher, their
key-independent projections stored in a cache for every later verify, and each one's leave-one-out p-value."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

from asvp.errors import AsvpError
from asvp.fingerprint import key_direction
from asvp.onnx_utils import load_model
from asvp.constants import REFERENCE_POOL, REFERENCE_SEEDS, REFERENCE_STEPS
from asvp.runtime.fingerprint.probes import task_of
from asvp.runtime.fingerprint.references import save_references, train_reference_students
from asvp.runtime.fingerprint.verifier import Verifier


@dataclass
class CalibrationResult:
    cache: str
    references: list  # [{name, c_loo, p_loo}]: each reference tested against the bias of the others
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        rows = [f"  {r['name']}" + ("" if math.isnan(r["c_loo"]) else
                                     f": leave-one-out c = {r['c_loo']:+.3f}, p = {r['p_loo']:.3g}")
                for r in self.references]
        if self.references and math.isnan(self.references[0]["c_loo"]):
            rows.append("  (with the key, each reference is also tested against the bias of the others)")
        return [f"{len(self.references)} reference model(s) stored in {self.cache} (key-independent; reused by "
                f"`asvp fingerprint verify --cache {self.cache}`)"] + rows



def calibrate(clean, defended, *, cache, task: str | None = None, seeds=REFERENCE_SEEDS,
              steps: int = REFERENCE_STEPS, pool: int = REFERENCE_POOL, references=None, test_key: str | None = None, progress: bool = False) -> CalibrationResult:
    """Train reference students of the clean teacher (and query any given `references`), store their
    key-independent projections in `cache` for every later `verify`; report each one's leave-one-out p-value
    (under a test key if given: a calibration check, not a requirement)."""
    t0 = time.perf_counter()
    if not cache:
        raise AsvpError("calibrate needs a cache directory (--cache DIR) to store the reference models in")
    if not isinstance(steps, int) or steps < 1 or not isinstance(pool, int) or pool < 2:
        raise AsvpError(f"steps must be >= 1 and pool >= 2, got steps={steps!r}, pool={pool!r}")
    v = Verifier.open(clean, defended, cache=cache, task=task, references=references)
    task = task or task_of(load_model(clean)) or task_of(load_model(defended))
    if seeds:
        if task is None:
            raise AsvpError("reference students need a task (--task): the clean model records none")
        for name, fn in train_reference_students(clean, task, seeds, steps, pool, progress=progress).items():
            v.refs[name] = v.project(fn, f"reference {name}")
    save_references(cache, v.probe_key, v.refs)
    u = key_direction(test_key, v.info.key_dim) if test_key else None
    rows = []
    for name, t in v.refs.items():
        c, p = v.test(t, u, exclude=name) if u is not None else (math.nan, math.nan)
        rows.append({"name": name, "c_loo": c, "p_loo": p})
    return CalibrationResult(str(cache), rows, round(time.perf_counter() - t0, 1))

