"""The CLI is built from shared argument groups: every subcommand's --help works, and the defence settings mean
the same thing (same names, types and defaults) wherever they appear."""
from __future__ import annotations

import pytest

from asvp.cli import COMMANDS, build_parser, main
from asvp.cli.args import DefenceArgs
from asvp.config import AsvpConfig


def _subparsers():
    p = build_parser()
    return p._subparsers._group_actions[0].choices


def test_every_subcommand_has_help(capsys):
    names = list(_subparsers())
    assert len(names) == len(COMMANDS)
    for name in names:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        assert "usage: asvp " + name in capsys.readouterr().out


def test_defence_settings_parse_alike():
    sub = _subparsers()
    d = sub["defend"].parse_args(["m.onnx", "-o", "o.onnx", "--h", "2", "--k", "3", "--k-mode", "fixed",
                                  "--placement", "inline", "--nodes", "a", "b"])
    assert DefenceArgs(nodes="list", mode=True).overrides(d) == {"h": 2.0, "k": 3, "k_mode": "fixed",
                                                                 "placement": "inline"}
    assert d.nodes == ["a", "b"] and d.mode == "subgraph"
    a = sub["attack"].parse_args(["--h", "2", "--k", "3", "--placement", "inline", "--nodes", "a", "--nodes", "b"])
    assert DefenceArgs(("h", "k", "placement")).config(a) == AsvpConfig(h=2.0, k=3, placement="inline")
    assert a.nodes == ["a", "b"]
    s = sub["sweep"].parse_args(["--task", "sr", "--h", "1.1", "2", "--k", "2", "4", "--nodes", "default", "x,y"])
    assert (s.h, s.k, s.nodes) == ([1.1, 2.0], [2, 4], ["default", "x,y"])
    assert DefenceArgs(("h",)).config(sub["demo"].parse_args([])) is None  # nothing given: AsvpConfig's defaults


def test_help_shows_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["defend", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    d = AsvpConfig()
    for text in (f"(default {d.h})", f"default {d.k};", f"(default {d.tau})", f"(default {d.placement})"):
        assert text in out


def test_groups_parse_into_the_typed_options_the_api_takes():
    from asvp.cli.args import ShapeProfileArgs, ThresholdArgs, TimingArgs
    from asvp.constants import MAX_TEACHER_DROP_DB, PROFILE_ITERS, PROFILE_WARMUP
    from asvp.options import ShapeProfile, Thresholds, Timing

    sub = _subparsers()
    v = sub["validate"].parse_args(["c.onnx", "d.onnx", "--max-abs-diff", "0.5"])
    assert ThresholdArgs.parse(v) == Thresholds(max_teacher_drop=MAX_TEACHER_DROP_DB, max_abs_diff=0.5)
    p = sub["profile"].parse_args(["c.onnx", "--threads", "2"])
    assert TimingArgs.parse(p) == Timing("1x3x256x256", PROFILE_WARMUP, PROFILE_ITERS, threads=2)
    b = sub["build"].parse_args(["m.onnx", "-o", "m.engine", "--max", "2x3x64x64"])
    assert ShapeProfileArgs.parse(b) == ShapeProfile(max="2x3x64x64")


def test_constants_match_their_owners():
    """The CLI shows defaults from asvp.constants without importing their owners; the owners agree."""
    import inspect

    from asvp import api, constants
    from asvp.graph_passes.defend import MODES
    from asvp.tasks import TASKS

    assert tuple(TASKS) == constants.TASK_NAMES and MODES == constants.DEFEND_MODES
    mark = inspect.signature(api.fingerprint_mark).parameters
    assert mark["max_drop_db"].default == constants.FINGERPRINT_MAX_DROP_DB
    assert mark["m"].default == constants.FINGERPRINT_M
