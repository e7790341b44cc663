"""research/fingerprint_keyspace_sim.py: the what-if reads the evaluation JSON and its rates respond to the mark."""
from __future__ import annotations

import numpy as np
import pytest

from asvp.fingerprint import key_direction

from research import fingerprint_keyspace_sim as sim


def _task(shift: float, dim: int = 16, seed: int = 0) -> dict:
    """A synthetic evaluation entry: innocent models with a shared bias, students of the marked model that add
    `shift` x the evaluation key to their paired clean student."""
    rng = np.random.default_rng(seed)
    bias = rng.standard_normal(dim)
    u = key_direction(sim.KEY, dim)
    refs = {f"ref{i}": (bias * rng.normal(1, 0.3) + 0.3 * rng.standard_normal(dim)).tolist() for i in range(4)}
    rows = []
    for s in range(6):
        neg = bias * rng.normal(1, 0.3) + 0.3 * rng.standard_normal(dim)
        rows.append({"name": f"student of clean, seed {s}", "label": "negative", "t": neg.tolist()})
        rows.append({"name": f"student of marked, seed {s}", "label": "positive", "t": (neg + shift * u).tolist()})
    return {"key_dim": dim, "references_t": refs, "rows": rows}


@pytest.mark.parametrize("mode", ["as evaluated", "noise-aware (refs)", "noise-aware (all innocents)"])
def test_rates_follow_the_mark(mode):
    rng = np.random.default_rng(0)
    tpr, fpr, n = sim.simulate(_task(shift=20.0), mode, 20, rng)
    assert n == 6 and tpr >= 0.9 and fpr <= 0.1
    tpr0, _, _ = sim.simulate(_task(shift=0.0), mode, 20, rng)
    assert tpr0 <= 0.1  # no mark learned: positives are as innocent as their pairs


def test_main_prints_a_markdown_table(tmp_path, capsys):
    import json

    path = tmp_path / "fp.json"
    path.write_text(json.dumps({"tasks": {"toy": _task(shift=20.0)}}))
    assert sim.main(["--json", str(path), "--trials", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| task | key space |") and len(out) == 2 + 3 and all("| toy |" in x for x in out[2:])
