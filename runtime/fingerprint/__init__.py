"""The distillation fingerprint, owner side (`asvp fingerprint mark|calibrate|verify`): mark a served model with a
secret key, then test whether a suspect was distilled from it. The key, the mark algebra and the exact test are
asvp.fingerprint; the graph edit is graph_passes.mark; this package runs them on models:

    probes       the probe images, running models on them (ProbeModel, as_suspect, query_outputs, projections)
    keyspace     the key-free part of a mark: principal directions, public key space, cost calibration
    mark         mark_file: calibrate the strength from the teacher's budget, insert, write
    references   reference students of the clean teacher, and their cache
    verifier     Verifier and verify: the statistic, its exact p-value, the verdict
    calibration  calibrate: store reference projections for later verifications
    check        quick_check: the demo's end-to-end check

It sits beside runtime.attacks, on the served-model plumbing of runtime.evaluation (served, students), and never
imports the attacker. The names below are importable from the package itself (`from asvp.runtime import
fingerprint as fp; fp.mark_file(...)`); each is loaded from its module on first use, so importing the package stays
cheap. Its user-facing defaults live in asvp.constants, with the CLI's.
"""
from __future__ import annotations

from importlib import import_module

_HOMES = {
    "PROBE_SEED": "probes", "ProbeModel": "probes", "as_suspect": "probes", "probe_inputs": "probes",
    "projections": "probes", "query_outputs": "probes", "task_of": "probes",
    "CAL_MARGIN": "keyspace", "KeySpace": "keyspace", "calibration_pairs": "keyspace",
    "calibration_psnr": "keyspace", "key_space": "keyspace",
    "MarkResult": "mark", "check_max_drop": "mark", "mark_file": "mark",
    "train_reference_students": "references", "load_references": "references", "save_references": "references",
    "FingerprintResult": "verifier", "Verifier": "verifier", "verify": "verifier",
    "CalibrationResult": "calibration", "calibrate": "calibration",
    "quick_check": "check",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)
