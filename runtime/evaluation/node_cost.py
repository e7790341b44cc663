"""`asvp node-cost`: what the defence costs at each candidate node, measured, and which nodes a latency budget
affords.

Why measure: on a small network an exact ASVP costs mostly passes over the feature (its Gram, the apply, the
write of the result, layout conversions), not its eigensolver (docs/method.md section 6). What those passes cost
depends on the feature's channels and resolution, on what the runtime fuses around the node, and on the hardware,
so one automatic node can cost several times another: on the dehaze teacher (ONNX Runtime CPU, 1x3x256x256, tap)
its 64-channel concatenation costs about x1.20 and a 16-channel ReLU x1.03. The tool measures on the backend,
threads and input shape you deploy:

1. Per candidate, the model defended at that node alone (your config and mode) is timed against the clean model,
   interleaved (`timing.time_interleaved`: each round runs the clean model and a group of at most GROUP defended
   ones in rotating order; one ONNX Runtime session per model, and each group's defended models are built when it
   is timed, so groups bound the memory). The cost of a node is
   the median over rounds of defended / clean latency in the same round, with the p25-p75 of those ratios.
2. With a budget B (a ratio, e.g. 1.10) and a count n: the candidates, in topological order, are split into n
   contiguous runs of (nearly) equal length, and the cheapest of each run is taken (ties: the last, the end of a
   stage), so the nodes stay spread over the network; a node that alone costs more than B is left out.
3. The chosen nodes are defended together and that model is timed against the clean one. The set fits when the
   p75 of its per-round ratios is within B (three rounds in four), a margin for the noise of any later
   measurement: two measurements of one set differ by up to about 0.01-0.02 on a quiet 2-core machine. While it
   does not fit, the dearest node (by its own cost) is dropped and the rest is timed again. The answer is the
   measured set that fits, or none. Single-node costs add up only roughly (fusions the runtime loses, shared layout
   conversions, noise), which is why step 3 measures the combination instead of adding.

Costs are latency ratios on this machine at this shape: noisy on a shared machine (rounds are paired against the
same round's clean run to cancel drifts; the p25-p75 says how noisy), and not transferable to another backend or
device. Re-run on the deployment target.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx

from asvp.config import AsvpConfig
from asvp.constants import NODE_COST_ITERS as DEFAULT_ITERS, NODE_COST_WARMUP as DEFAULT_WARMUP
from asvp.constants import PROFILE_SHAPE as DEFAULT_SHAPE
from asvp.errors import AsvpError
from asvp.graph_passes import select
from asvp.graph_passes.tables import text_table
from asvp.graph_passes.defend import MODES, defend_model
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.engines import backends
from asvp.runtime.evaluation.timing import (active_runners, check_shape, check_size_multiple, check_timing,
                                            time_interleaved)
from asvp.runtime.evaluation.report import Section, check_report_dir, fmt, jsonable, md_table, new_figure, write_report

GROUP = 8  # defended models timed per round beside the clean one


@dataclass
class NodeCost:
    index: int  # topological position, as `asvp nodes` lists it
    name: str
    op_type: str
    shape: list
    channels: int
    ratio: float  # median of the paired defended/clean ratios
    ratio_p25: float
    ratio_p75: float
    defended_ms: float  # p50 latency of the model defended at this node alone
    auto: bool = False  # defend's automatic node (no --nodes)


@dataclass
class Trial:
    """One timing of a chosen set defended together (step 3)."""
    nodes: list
    ratio: float
    ratio_p25: float
    ratio_p75: float
    fits: bool  # ratio_p75 <= budget


@dataclass
class CostResult:
    model: str
    backend: str
    provider: str
    shape: list
    warmup: int
    iters: int
    threads: int | None
    mode: str
    config: dict
    clean_ms: float
    costs: list  # [NodeCost], topological order
    budget: float | None = None
    count: int | None = None
    choice: list = field(default_factory=list)  # node names that fit the budget, measured together
    trials: list = field(default_factory=list)  # [Trial]
    report_dir: str | None = None

    @property
    def chosen(self) -> Trial | None:
        """The trial of the final choice (None: no budget asked, or nothing fits)."""
        return next((t for t in self.trials if t.fits), None)

    def to_dict(self) -> dict:
        return jsonable(asdict(self))

    def summary_lines(self) -> list[str]:
        lines = [f"cost of ASVP at each node alone ({self.mode}, placement {self.config.get('placement')}), "
                 f"backend {self.backend} ({self.provider}), shape {'x'.join(map(str, self.shape))}, "
                 f"{self.warmup} warm-up + {self.iters} timed rounds interleaved with the clean model "
                 f"(p50 {fmt(self.clean_ms)} ms); cost = median defended/clean [p25-p75]:"]
        rows = [("#", "name", "C", "output shape", "cost", "p25-p75", "")]
        rows += [(str(c.index), c.name, str(c.channels), "[" + ", ".join(map(str, c.shape)) + "]", f"x{c.ratio:.3f}",
                  f"{c.ratio_p25:.3f}-{c.ratio_p75:.3f}",
                  " ".join(t for t, on in (("auto", c.auto), ("chosen", c.name in self.choice)) if on))
                 for c in self.costs]
        lines += text_table(rows)
        if self.budget is not None:
            for t in self.trials:
                lines.append(f"together: {', '.join(t.nodes)}: x{t.ratio:.3f} [{t.ratio_p25:.3f}-{t.ratio_p75:.3f}]"
                             f" {'fits' if t.fits else 'over'} x{self.budget:g}")
            best = self.chosen
            if best is None:
                lines.append(f"no candidate fits x{self.budget:g} on this backend at this shape")
            else:
                short = f" ({len(best.nodes)} of the {self.count} asked)" if len(best.nodes) < self.count else ""
                lines.append(f"within x{self.budget:g}{short}: asvp defend MODEL -o OUT --nodes "
                             + " ".join(best.nodes))
        if self.report_dir:
            lines.append(f"report: {self.report_dir}")
        return lines

    def to_section(self) -> Section:
        rows = [[str(c.index), f"`{c.name}`", c.op_type, str(c.channels), "[" + ", ".join(map(str, c.shape)) + "]",
                 f"{c.ratio:.3f}", f"{c.ratio_p25:.3f}-{c.ratio_p75:.3f}", fmt(c.defended_ms),
                 ", ".join(t for t, on in (("auto", c.auto), ("chosen", c.name in self.choice)) if on)]
                for c in self.costs]
        md = (f"Backend `{self.backend}` (ran on {self.provider}), input {'x'.join(map(str, self.shape))}, "
              f"{self.warmup} warm-up and {self.iters} timed rounds, each running the clean model (p50 "
              f"{fmt(self.clean_ms)} ms) and the models defended at one node each, interleaved. Mode {self.mode}, "
              f"config {self.config}. Cost: median of the per-round ratios defended / clean, with p25-p75.\n\n"
              + md_table(["#", "node", "op", "C", "output shape", "cost", "p25-p75", "defended p50 (ms)", ""], rows))
        if self.budget is not None:
            md += "\n" + md_table(["nodes defended together", "cost", "p25-p75", f"within x{self.budget:g}"],
                                  [[", ".join(f"`{n}`" for n in t.nodes), f"{t.ratio:.3f}",
                                    f"{t.ratio_p25:.3f}-{t.ratio_p75:.3f}", "yes" if t.fits else "no"]
                                   for t in self.trials])
            if self.chosen is None:
                md += f"\nNo candidate fits x{self.budget:g}.\n"
        data = self.to_dict()
        data.pop("report_dir", None)
        return Section("Cost of the defence per node", data, md, {"costs": self.figure()})

    def figure(self):
        fig = new_figure(8.0, max(2.5, 0.28 * len(self.costs) + 1.2))
        ax = fig.subplots()
        y = np.arange(len(self.costs))[::-1]
        r = np.array([c.ratio for c in self.costs])
        err = np.array([[c.ratio - c.ratio_p25 for c in self.costs], [c.ratio_p75 - c.ratio for c in self.costs]])
        colors = ["#dd8452" if c.name in self.choice else "#4c72b0" for c in self.costs]
        ax.barh(y, r - 1.0, left=1.0, xerr=np.clip(err, 0, None), color=colors, capsize=2)
        ax.set_yticks(y, [f"{c.name} (C={c.channels})" for c in self.costs], fontsize=7)
        ax.axvline(1.0, color="black", lw=0.8)
        if self.budget is not None:
            ax.axvline(self.budget, color="#c44e52", ls="--", lw=1, label=f"budget x{self.budget:g}")
            ax.legend(fontsize=8)
        ax.set_xlabel("defended / clean latency (median of paired rounds; bars p25-p75)")
        ax.set_title(f"ASVP at one node each, {self.backend}, {'x'.join(map(str, self.shape))}"
                     + ("; orange: chosen" if self.choice else ""), fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        return fig


def choose(costs: list[NodeCost], budget: float, count: int) -> list[str]:
    """Step 2 of the module docstring: the cheapest candidate of each of `count` contiguous runs (ties: the last),
    without those that alone exceed the budget. Names, in topological order."""
    order = sorted(costs, key=lambda c: c.index)
    if not order:
        return []
    picked = []
    for run in np.array_split(np.arange(len(order)), min(count, len(order))):
        members = [order[i] for i in run]
        cheapest = min(c.ratio for c in members)
        picked.append([c for c in members if c.ratio == cheapest][-1])
    return [c.name for c in picked if c.ratio <= budget]


def _paired(clean_s, defended_s) -> tuple[float, float, float]:
    r = np.asarray(defended_s) / np.maximum(np.asarray(clean_s), 1e-12)
    return float(np.median(r)), float(np.percentile(r, 25)), float(np.percentile(r, 75))


def _time(clean: onnx.ModelProto, variants: dict, *, backend, shape, warmup, iters, threads, input_name, data,
          progress) -> tuple[float, str, dict]:
    """Clean p50 (ms), the provider that ran it, and per variant (ratio, p25, p75, p50 ms); groups of GROUP.
    variants: label -> a function that builds the defended model, called when its group is timed, so that at most
    GROUP defended copies of the model exist at a time."""
    labels = list(variants)
    groups = [labels[i:i + GROUP] for i in range(0, len(labels), GROUP)] or [[]]
    clean_times, provider, out = [], "", {}
    for g, group in enumerate(groups):
        with active_runners(backend, shape) as runners:
            for name, model in [("clean", lambda: clean)] + [(lb, variants[lb]) for lb in group]:
                r = backends.make_runner(model(), backend, input_shape=tuple(shape), name=name, threads=threads)
                r.activate()
                runners.append(r)
                r.infer({input_name: data})  # checked once: inputs, provider
            provider = backends.actual_provider(runners[0], backend)
            desc = f"cost [{backend}]" + (f" {g + 1}/{len(groups)}" if len(groups) > 1 else "")
            times = time_interleaved(runners, [{input_name: data}] * len(runners), warmup, iters, desc=desc,
                                     progress=progress)
        clean_times += times[0]
        for lb, t in zip(group, times[1:]):
            out[lb] = _paired(times[0], t) + (float(np.median(t)) * 1e3,)
    return float(np.median(clean_times)) * 1e3, provider, out


def node_costs(model_path: str | os.PathLike, *, nodes=None, config: AsvpConfig | dict | None = None,
               mode: str = "subgraph", backend: str = "onnxrt-cpu", shape=DEFAULT_SHAPE,
               warmup: int = DEFAULT_WARMUP, iters: int = DEFAULT_ITERS, threads: int | None = None,
               budget: float | None = None, count: int = 1, seed: int = 0, out=None,
               progress: bool = True) -> CostResult:
    """Measure the defence's cost at each candidate (or at the `nodes` selectors) of the CLEAN model at
    `model_path`; with `budget`, choose up to `count` nodes that fit it, measured together (module docstring)."""
    check_timing(warmup, iters, threads)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise AsvpError(f"count must be an integer >= 1, got {count!r}")
    if budget is not None and not (isinstance(budget, (int, float)) and np.isfinite(budget) and budget > 1.0):
        raise AsvpError(f"budget is a latency ratio defended/clean > 1 (e.g. 1.10), got {budget!r}")
    if mode not in MODES:
        raise AsvpError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if backend == "tensorrt":
        raise AsvpError("--cost times ONNX models on ONNX Runtime backends; for TensorRT, build engines of the "
                        "defended models and compare them with `asvp profile`")
    if out is not None:
        check_report_dir(out)
    cfg = (AsvpConfig.from_dict(config) if isinstance(config, dict) else (config or AsvpConfig())).validate()
    model = load_model(model_path)
    input_name, _ = image_io(model)
    shape = check_shape(shape)
    check_size_multiple(model, shape)
    cands = select.candidates(model)
    feats = select.resolve(model, nodes) if nodes else [c for c in cands if c.channels > cfg.k]
    for f in feats:
        select.check_feature(f, cfg.k)
    if not feats:
        raise AsvpError(f"no candidate feature node has more than k={cfg.k} channels; see `asvp nodes MODEL`")
    top = select.automatic(cands) if cands else None
    auto = (top.name or top.output) if top else None

    label = {f.output: f.name or f.output for f in feats}  # unnamed nodes: their tensor (a selector too)

    def defended(selectors: list):
        return lambda: defend_model(model, list(selectors), cfg, mode=mode)[0]

    variants = {label[f.output]: defended([label[f.output]]) for f in feats}
    data = np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)
    kw = dict(backend=backend, shape=shape, warmup=warmup, iters=iters, threads=threads, input_name=input_name,
              data=data, progress=progress)
    clean_ms, provider, measured = _time(model, variants, **kw)
    costs = [NodeCost(f.index, label[f.output], f.op_type, list(f.shape), f.channels, *measured[label[f.output]],
                      auto=label[f.output] == auto) for f in feats]
    res = CostResult(str(model_path), backend, provider, list(shape), warmup, iters, threads, mode, cfg.to_dict(),
                     clean_ms, costs, budget, count if budget is not None else None)
    if budget is not None:
        picked = choose(costs, budget, count)
        by_name = {c.name: c for c in costs}
        while picked:
            _, _, got = _time(model, {"set": defended(picked)}, **kw)
            ratio, p25, p75, _ = got["set"]
            res.trials.append(Trial(list(picked), ratio, p25, p75, p75 <= budget))
            if p75 <= budget:
                res.choice = list(picked)
                break
            picked.remove(max(picked, key=lambda n: by_name[n].ratio))
    if out is not None:
        res.report_dir = str(write_report(out, {"node_cost": res.to_section()}))
    return res
