"""The CLI is built from shared argument groups: every subcommand's --help works, and the defence settings mean
the same thing (same names, types and defaults) wherever they appear."""
from __future__ import annotations

import pytest

from asvp.cli import SUBCOMMANDS, build_parser, main
from asvp.cli.args import DefenceArgs
from asvp.config import AsvpConfig


def _subparsers():
    p = build_parser()
    return p._subparsers._group_actions[0].choices


def test_every_subcommand_has_help(capsys):
    names = list(_subparsers())
    assert len(names) == len(SUBCOMMANDS)
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
