"""Peak memory measurement (runtime.evaluation.memory); the subprocess path runs through `asvp profile` in
test_profile_report.py."""
from __future__ import annotations

import numpy as np

from asvp.runtime.evaluation.memory import PeakMemory


def test_peak_memory_sees_an_allocation():
    with PeakMemory() as pm:
        x = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        x[::512] = 2.0
        del x
    assert pm.peak_mb >= 48, (pm.method, pm.peak_mb)
