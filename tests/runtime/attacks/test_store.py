"""What the attacks cache and under which key (runtime/attacks/store.py, run.result_key): the key follows the
code that produces the cached result, so an edit can never reuse stale students."""
from __future__ import annotations

import importlib
import sys

from asvp.runtime.attacks import store
from asvp.runtime.attacks.recipes import PRESETS
from asvp.runtime.attacks.run import result_key
from asvp.runtime.attacks.store import CACHED_BY, StudentStore, cache_version, code_digest


def test_the_code_digest_follows_the_source_and_the_version(tmp_path, monkeypatch):
    (tmp_path / "asvp_cache_probe.py").write_text("STEPS = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    before = code_digest(["asvp_cache_probe"])
    (tmp_path / "asvp_cache_probe.py").write_text("STEPS = 2\n")  # an edit, not imported again
    assert code_digest(["asvp_cache_probe"]) != before
    assert code_digest(["asvp_cache_probe"], version="9.9.9") != code_digest(["asvp_cache_probe"])
    sys.modules.pop("asvp_cache_probe", None)


def test_the_cache_version_covers_the_student_code():
    assert "asvp.runtime.evaluation.students" in CACHED_BY and "asvp.runtime.attacks.distill" in CACHED_BY
    assert cache_version() == code_digest() == store.cache_version()  # computed once, the same value


def test_a_new_code_digest_changes_the_result_key(tmp_path):
    clean, defended = tmp_path / "c.onnx", tmp_path / "d.onnx"
    clean.write_bytes(b"clean")
    defended.write_bytes(b"defended")
    args = ("sr", clean, defended, "feature", PRESETS["quick"], 0)
    assert result_key(*args) == result_key(*args, version=cache_version())
    assert result_key(*args, version="other-code") != result_key(*args)


def test_student_store_persists_per_student(tmp_path):
    key = ("v", "sr", "feature", (), "{}", "{}", "clean", "digest", 0)
    StudentStore(tmp_path)[key] = ({"psnr": 30.0}, {"hint_layers": []})
    fresh = StudentStore(tmp_path)
    assert key in fresh and fresh[key] == ({"psnr": 30.0}, {"hint_layers": []})
    assert ("v", "other") not in fresh
