"""Paired statistics of student drops (runtime/evaluation/stats.py): intervals and the verdict rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from asvp.errors import AsvpError
from asvp.runtime.evaluation.stats import MIN_DROP_DB, counts_above, paired_drop


def test_t_interval_of_a_known_sample():
    # diffs 1..5: mean 3, sd sqrt(2.5); t(0.975, 4) = 2.7764 (tables) -> half width 1.9632
    r = paired_drop([11, 12, 13, 14, 15], [10, 10, 10, 10, 10])
    assert r.n == 5 and r.mean == pytest.approx(3.0) and r.sd == pytest.approx(np.sqrt(2.5))
    assert (r.ci_low, r.ci_high) == (pytest.approx(3 - 1.9632, abs=1e-3), pytest.approx(3 + 1.9632, abs=1e-3))
    assert r.counts and "n=5" in r.text()


def test_the_verdict_needs_the_interval_to_exclude_zero_and_the_mean_to_pass_the_threshold():
    tiny = paired_drop([20.05, 20.06, 20.04, 20.05, 20.07], [20.0] * 5)  # real (all > 0) but below 0.1 dB
    assert tiny.ci_low > 0 and tiny.mean < MIN_DROP_DB and not tiny.counts
    noisy = paired_drop([21.0, 19.5, 20.8, 19.4, 20.6], [20.0] * 5)  # mean 0.26 dB, interval spans 0
    assert noisy.mean > MIN_DROP_DB and noisy.ci_low < 0 and not noisy.counts
    big = paired_drop([21.0, 21.2, 20.9, 21.1, 21.0], [20.0] * 5)
    assert big.counts and counts_above(big, 0.5) and not counts_above(big, 1.0)
    assert counts_above(big.to_dict(), 0.5)  # the same rule on a stored result
    same = paired_drop([20.0, 21.0, 22.0], [20.0, 21.0, 22.0])  # identical students: zero-width interval at 0
    assert same.ci_low == same.ci_high == 0.0 and not same.counts


def test_one_seed_has_no_interval_and_never_counts():
    r = paired_drop([25.0], [20.0])
    assert r.ci_low is None and not r.counts and "no interval" in r.text()


def test_bootstrap_interval_is_seeded_and_inside_the_sample_range():
    c, d = [20.3, 20.1, 20.6, 20.2, 20.4, 20.5], [20.0] * 6
    a, b = (paired_drop(c, d, interval="bootstrap", seed=1) for _ in range(2))
    assert a == b
    diffs = np.subtract(c, d)
    assert diffs.min() <= a.ci_low < a.mean < a.ci_high <= diffs.max()
    t = paired_drop(c, d)
    assert (a.ci_high - a.ci_low) < (t.ci_high - t.ci_low)  # percentile bootstrap is narrower with few pairs


def test_t_interval_covers_the_true_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    trials, hits = 2000, 0
    for _ in range(trials):
        diffs = 0.2 + 0.3 * rng.standard_normal(5)
        r = paired_drop(diffs, np.zeros(5))
        hits += r.ci_low <= 0.2 <= r.ci_high
    assert 0.93 <= hits / trials <= 0.97


@pytest.mark.parametrize("args, kw, needle", [
    (([1.0, 2.0], [1.0]), {}, "same non-zero number"),
    (([], []), {}, "same non-zero number"),
    (([1.0, np.nan], [1.0, 1.0]), {}, "finite"),
    (([1.0, 2.0], [1.0, 1.0]), {"interval": "jackknife"}, "unknown interval"),
    (([1.0, 2.0], [1.0, 1.0]), {"confidence": 1.5}, "confidence"),
])
def test_bad_input_is_refused(args, kw, needle):
    with pytest.raises(AsvpError, match=needle):
        paired_drop(*args, **kw)


def test_plateau_criterion_on_synthetic_curves():
    from asvp.runtime.evaluation.stats import plateau

    steps = range(10, 110, 10)
    flat = [[s, 0.05 + 0.1 * math.exp(-s / 5)] for s in steps]  # flattened long before the last 30 %
    falling = [[s, 0.2 - 0.0015 * s] for s in steps]  # still falling steadily at the end
    assert plateau(flat)["plateaued"] is True and plateau(flat)["rel_improvement"] < 0.02
    assert plateau(falling)["plateaued"] is False and plateau(falling)["rel_improvement"] > 0.02
    assert plateau(falling, tol=0.9)["plateaued"] is True  # the tolerance is what decides
    assert plateau([[1, 0.1], [2, 0.09]])["plateaued"] is None  # too short to judge
    assert plateau([[1, 0.1], [2, float("nan")], [3, 0.1]])["plateaued"] is None
