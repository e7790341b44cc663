"""runtime/evaluation/node_cost.py: per-node cost of the defence, measured, and the nodes a budget affords."""
from __future__ import annotations

import json

import onnx
import pytest

from asvp import api
from asvp.cli import main
from asvp.graph_passes import select
from asvp.runtime.evaluation.node_cost import NodeCost, choose


def _costs(*ratios):
    return [NodeCost(i, f"n{i}", "Relu", ["N", 8, "H", "W"], 8, r, r - 0.01, r + 0.01, 1.0) for i, r in enumerate(ratios)]


def test_choose_takes_the_cheapest_of_each_run_and_the_last_on_ties():
    # runs of 2, 2, 2: [1.05, 1.02], [1.02, 1.02], [1.30, 1.01]
    assert choose(_costs(1.05, 1.02, 1.02, 1.02, 1.30, 1.01), 1.10, 3) == ["n1", "n3", "n5"]
    assert choose(_costs(1.05, 1.02, 1.02, 1.02, 1.30, 1.01), 1.10, 1) == ["n5"]  # one run: the cheapest overall


def test_choose_leaves_out_a_node_over_the_budget_and_caps_the_count():
    assert choose(_costs(1.20, 1.25, 1.03), 1.10, 3) == ["n2"]
    assert choose(_costs(1.02, 1.03), 1.10, 5) == ["n0", "n1"]  # more asked than there are
    assert choose(_costs(1.20, 1.25), 1.10, 2) == []
    assert choose([], 1.10, 2) == []


@pytest.fixture(scope="module")
def dehaze(exported):
    return exported("dehaze")


def test_costs_every_candidate_and_marks_auto(dehaze, tmp_path):
    res = api.node_costs(dehaze, shape="1x3x32x32", warmup=1, iters=3, threads=1, progress=False)
    model = onnx.load(dehaze)
    cands = [c.name for c in select.candidates(model) if c.channels > 4]
    assert [c.name for c in res.costs] == cands
    assert all(c.ratio > 0 and c.ratio_p25 <= c.ratio <= c.ratio_p75 for c in res.costs)
    assert [c.name for c in res.costs if c.auto] == [select.automatic(select.candidates(model)).name]
    assert res.clean_ms > 0 and res.budget is None and res.choice == [] and res.trials == []
    assert res.threads == 1 and res.config["placement"] == "tap"


def test_budget_choice_is_measured_together(dehaze, tmp_path):
    # A generous budget: every run's cheapest fits, and the set is measured once.
    res = api.node_costs(dehaze, nodes=["/Relu", "/Relu_2", "/Concat_2"], shape="1x3x32x32", warmup=1, iters=3,
                         threads=1, budget=50.0, count=2, progress=False, out=tmp_path / "r")
    assert [c.name for c in res.costs] == ["/Relu", "/Relu_2", "/Concat_2"]
    assert len(res.trials) == 1 and res.trials[0].fits and res.choice == res.trials[0].nodes
    assert 1 <= len(res.choice) <= 2 and set(res.choice) <= {"/Relu", "/Relu_2", "/Concat_2"}
    data = json.loads((tmp_path / "r" / "report.json").read_text())["sections"]["node_cost"]
    assert data["choice"] == res.choice
    assert (tmp_path / "r" / "node_cost-costs.png").stat().st_size > 0


def test_a_budget_nothing_fits_is_said_not_hidden(dehaze):
    # 1 + 1e-9: no defended model is that cheap (a tie at 1.000 would need all rounds to be equal).
    res = api.node_costs(dehaze, nodes=["/Concat_2"], shape="1x3x32x32", warmup=0, iters=3, threads=1,
                         budget=1.0 + 1e-9, count=1, progress=False)
    assert res.choice == [] and res.chosen is None
    assert all(not t.fits for t in res.trials)
    assert any("no candidate fits" in line for line in res.summary_lines())


def test_cli_cost_json(dehaze, capsys):
    assert main(["node-cost", dehaze, "--nodes", "/Relu", "--shape", "1x3x16x16", "--warmup", "0",
                 "--iters", "2", "--threads", "1", "--json", "-q"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in out["costs"]] == ["/Relu"] and out["iters"] == 2 and out["shape"] == [1, 3, 16, 16]


def test_cli_timing_options_belong_to_node_cost(dehaze, capsys):
    with pytest.raises(SystemExit) as e:  # `asvp nodes` only lists: argparse refuses the options of node-cost
        main(["nodes", dehaze, "--iters", "5"])
    assert e.value.code == 2 and "unrecognized arguments: --iters 5" in capsys.readouterr().err


def test_the_old_cost_flag_is_redirected_for_one_release(dehaze, capsys):
    assert main(["nodes", dehaze, "--cost", "--nodes", "/Relu", "--shape", "1x3x16x16", "--warmup", "0",
                 "--iters", "1", "--threads", "1", "--json", "-q"]) == 0
    captured = capsys.readouterr()
    assert "is now `asvp node-cost`" in captured.err and json.loads(captured.out)["iters"] == 1


def test_threads_reach_every_session(dehaze, monkeypatch):
    from asvp.runtime.engines import backends

    seen, real = [], backends.make_runner

    def spy(model, backend, **kw):
        seen.append(kw.get("threads"))
        return real(model, backend, **kw)

    monkeypatch.setattr(backends, "make_runner", spy)
    api.node_costs(dehaze, nodes=["/Relu"], shape="1x3x16x16", warmup=0, iters=1, threads=1, progress=False)
    assert seen == [1, 1]  # the clean model and the one defended at /Relu


def test_unnamed_nodes_are_labelled_by_their_tensor(dehaze, tmp_path):
    model = onnx.load(dehaze)
    for node in model.graph.node:
        node.name = ""
    path = tmp_path / "unnamed.onnx"
    onnx.save(model, path)
    outs = [c.output for c in select.candidates(model) if c.channels > 4][:2]
    res = api.node_costs(path, nodes=outs, shape="1x3x16x16", warmup=0, iters=1, threads=1, budget=50.0, count=2,
                         progress=False)
    assert [c.name for c in res.costs] == outs and sum(c.auto for c in res.costs) <= 1
    assert res.choice and set(res.choice) <= set(outs)
