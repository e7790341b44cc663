"""Reference models: students of the CLEAN teacher (never of the marked one), and the store of their
key-independent projections on the probes. Their systematic bias is what the test can remove for power
(verifier.Verifier.nuisance) and what marking can keep the key space away from (keyspace.key_space)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from asvp.io import atomic_output
from asvp.runtime.evaluation.served import THREADS, ServedModel, get_answers, make_queries, torch_threads
from asvp.runtime.evaluation.students import TrainBudget, predict, train_student
from asvp.constants import REFERENCE_POOL, REFERENCE_SEEDS, REFERENCE_STEPS


def train_reference_students(clean, task: str, seeds=REFERENCE_SEEDS, steps: int = REFERENCE_STEPS,
                             pool: int = REFERENCE_POOL, crop: int = 64, progress: bool = False,
                             threads: int = THREADS) -> dict:
    """Students distilled from the CLEAN teacher (never from the marked one): name -> callable. Torch runs on
    `threads` threads meanwhile (restored afterwards)."""
    out = {}
    with torch_threads(threads):
        for s in seeds:
            q = make_queries(task, pool, crop, s)
            y, _ = get_answers(ServedModel(clean, threads=threads), q, None, "clean", progress)
            m, _ = train_student(task, q, y, seed=s, budget=TrainBudget(steps=steps, batch=8),
                                 desc=f"reference student s{s}", progress=progress)
            out[f"student-of-clean-s{s}-{steps}x{pool}"] = student_fn(m)
    return out


def student_fn(model):
    """A trained student as a suspect: a callable float32 NCHW batch -> its outputs."""
    return lambda x: predict(model, torch.from_numpy(np.ascontiguousarray(x, np.float32)))


def _refs_path(cache, probe_key: str) -> Path | None:
    return Path(cache) / f"fingerprint-references-{probe_key}.npz" if cache else None


def load_references(cache, probe_key: str) -> dict[str, np.ndarray]:
    """The reference projections stored in `cache` for these probes ({} when none or no cache)."""
    path = _refs_path(cache, probe_key)
    if path is None or not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def save_references(cache, probe_key: str, refs: dict[str, np.ndarray]) -> None:
    """Store the reference projections in `cache` (atomically), keyed by the probes' key (verifier.probe_key)."""
    path = _refs_path(cache, probe_key)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **refs)
