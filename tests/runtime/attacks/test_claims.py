"""Judging the measurements (runtime/attacks/claims.py): which of the paper's claims hold, from the numbers."""
from __future__ import annotations

from asvp.runtime.attacks.claims import claims
from asvp.runtime.evaluation.stats import paired_drop


def test_claims_are_computed_from_the_numbers():
    def row(task, t_db, s_db, noise):
        return {"task": task, "drops": {"teacher": {"db": t_db, "ssim_pct": 0.0},
                                        "student": {"db": s_db, "ssim_pct": 10.0 * s_db}},
                "noise_margin_db": noise}

    good = claims([row("a", 0.0, 3.0, 0.2)])
    assert all(c["holds"] for c in good[:4])
    bad = claims([row("a", 0.5, 0.05, 0.2)])
    assert not any(c["holds"] for c in bad)
    # the evidence states the measured numbers behind each verdict
    assert bad[0]["evidence"] == "0/1 tasks; teacher drops: a +0.50 dB"
    assert bad[1]["evidence"] == "0/1 tasks count; student drops: a +0.05 dB (margin 0.20)"
    assert bad[3]["evidence"] == "largest student drop +0.05 dB (a)"


def test_claims_use_the_interval_when_there_are_paired_seeds():
    def row(single_db, clean, defended):
        return {"task": "a", "drops": {"teacher": {"db": 0.0, "ssim_pct": 0.0},
                                       "student": {"db": single_db, "ssim_pct": 0.0}},
                "noise_margin_db": 0.2, "paired": {"student": paired_drop(clean, defended).to_dict()}}

    # one seed pair looks like a 1 dB drop, but the five pairs straddle 0: does not count
    noisy = claims([row(1.0, [21.0, 19.2, 20.9, 19.1, 20.4], [20.0] * 5)])
    assert not noisy[1]["holds"] and not noisy[5]["holds"]
    # one seed pair shows nothing above the noise margin, but five pairs are consistently 0.15 dB down: counts
    steady = claims([row(0.1, [20.15, 20.14, 20.16, 20.15, 20.15], [20.0] * 5)])
    assert steady[1]["holds"] and steady[5]["holds"]
