"""Benchmark of the standard-op ASVP subgraph (graph_passes): latency cost on ONNX Runtime CPU, cost against a
naive exact SVD, and approximation error against the float64 reference.

    python -m benchmarks.bench_graph_passes [--out benchmarks/results/graph_passes.json] [--repeats 20]
    python -m benchmarks.bench_graph_passes --accuracy-only     # just the error-vs-iterations table
    python -m benchmarks.bench_graph_passes --breakdown [--placement inline]   # where the time goes
    python -m benchmarks.bench_graph_passes --apply-forms       # dense vs low-rank apply, by C

What it measures (everything on ONNX Runtime's CPU execution provider, float32):
  * latency of the SR teacher at 1x3x256x256, clean vs defended with 1 node (the automatic choice) and with 3
    nodes, interleaved: after a warm-up, every repeat runs each model once, in a rotating order, so drifts of a
    shared machine hit all models alike; the ratio is of medians;
  * the subgraph alone on the defended feature [1, 32, 256, 256] vs torch.linalg.svd (float32, reduced) of the
    same matrix and vs asvp_exact (float64 Gram eigh), each the median of the same repeats;
  * the relative error ||out - ref|| / ||ref|| of the tap output against asvp_reference (float64 SVD) at 256x256;
  * the size of the subgraph: ONNX nodes and its longest chain of dependent nodes, at C = 16, 32, 64;
  * the error at EVERY candidate feature of every bundled teacher (held-out images, size 96), both as
    ||out - ref|| / ||ref|| (what the tests bound by 1e-3) and as ||out - ref|| / ||ref - F|| (relative to the
    perturbation itself);
  * the error-vs-iterations table on every bundled teacher's automatic node (held-out images, size 96);
  * where each teacher's extra time goes, one and three defended nodes (cost_breakdown: ONNX Runtime's per-node
    profile split into the Gram, the apply, the output node, the small ops, layout reorders and the rest);
  * the apply step's forms alone (dense / low rank) by C and placement (apply_forms: why DENSE_APPLY_MAX_C = 32).
Everything runs with THREADS (1) intra-op thread: the machine these figures come from is shared.

`run(out_path, repeats=...)` returns the results dict and writes it as JSON (the `make bench` aggregator calls it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "graph_passes.json"
TASKS = ("sr", "lowlight", "underwater", "dehaze", "derain")
THREE_NODES = ["Conv#1", "Relu#2", "auto"]
ITERS_GRID = (1, 2, 3, 4, 5, 6, 8)
SIZE_CHANNELS = (16, 32, 64)
THREADS = 1  # ONNX Runtime intra-op threads (and torch's, for the exact decompositions): the machine is shared


def _session(model_or_path):
    import onnxruntime as ort

    src = model_or_path.SerializeToString() if hasattr(model_or_path, "SerializeToString") else str(model_or_path)
    so = ort.SessionOptions()  # graph optimisation level: ONNX Runtime's default (all), as asvp's own sessions
    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def _stats(ms: list[float]) -> dict:
    s = sorted(ms)
    return {"median_ms": statistics.median(s), "mean_ms": statistics.fmean(s), "p90_ms": s[int(0.9 * (len(s) - 1))],
            "min_ms": s[0], "n": len(s)}


def interleaved(runners: dict, repeats: int, warmup: int = 3, cpu: dict | None = None) -> dict:
    """name -> list of wall-clock ms; each repeat runs every model once, rotating the order.

    cpu: a dict to fill with the same runs' CPU time of this thread (ms). With one intra-op thread ONNX Runtime
    computes on the calling thread, so this is the inference's own CPU time: on a shared machine it does not
    count the time the scheduler gives to other processes, which wall-clock time does."""
    names = list(runners)
    for _ in range(warmup):
        for n in names:
            runners[n]()
    times = {n: [] for n in names}
    if cpu is not None:
        cpu.update({n: [] for n in names})
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            t0, c0 = time.perf_counter(), time.thread_time()
            runners[n]()
            t1, c1 = time.perf_counter(), time.thread_time()
            times[n].append((t1 - t0) * 1e3)
            if cpu is not None:
                cpu[n].append((c1 - c0) * 1e3)
    return times


def _rel_err(out, ref) -> float:
    import torch

    out = torch.as_tensor(np.asarray(out)).double().flatten(1)
    ref = torch.as_tensor(np.asarray(ref)).double().flatten(1)
    return float(((out - ref).norm(dim=1) / ref.norm(dim=1)).max())


def _rel_to_perturbation(out, ref, feat) -> float:
    """Worst per-sample ||out - ref|| / ||ref - F||: the error relative to the perturbation ASVP adds."""
    import torch

    out, ref, feat = (torch.as_tensor(np.asarray(a)).double().flatten(1) for a in (out, ref, feat))
    return float(((out - ref).norm(dim=1) / (ref - feat).norm(dim=1).clamp_min(1e-300)).max())


def graph_size(channels=SIZE_CHANNELS) -> list[dict]:
    """ONNX nodes and longest dependent chain of the subgraph for one feature, default config and fixed k."""
    from asvp.config import AsvpConfig
    from asvp.graph_passes.subgraph import graph_depth

    rows = []
    for c in channels:
        for cfg in (AsvpConfig(), AsvpConfig(k_mode="fixed")):
            nodes, chain = graph_depth(_standalone(c, cfg))
            rows.append({"channels": c, "k_mode": cfg.k_mode, "k": cfg.k, "nodes": nodes, "longest_chain": chain})
    return rows


def exported_teachers(tasks=TASKS, workdir: Path | None = None):
    """Yield (task, TaskSpec, clean ModelProto) for each bundled teacher, exported into workdir (default: a
    temporary directory); a teacher without bundled weights yields (task, None, None)."""
    import onnx

    from asvp import api
    from asvp.exporter.teachers.bundled import has_weights
    from asvp.tasks import get_task

    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            if not has_weights(task):
                yield task, None, None
                continue
            path = api.export(task, Path(workdir or tmp) / f"{task}.onnx", force=True).path
            yield task, get_task(task), onnx.load(path)


def candidate_accuracy(tasks=TASKS, size: int = 96, workdir: Path | None = None) -> list[dict]:
    """Worst error of the subgraph (ONNX Runtime) vs asvp_reference at every candidate feature of each teacher."""
    import torch

    from asvp.config import AsvpConfig
    from asvp.graph_passes import select
    from asvp.method import asvp_reference

    cfg = AsvpConfig()
    rows = []
    for task, spec, clean in exported_teachers(tasks, workdir):
        if clean is None:
            rows.append({"task": task, "skipped": "no bundled weights"})
            continue
        cands = [c for c in select.candidates(clean) if c.channels > cfg.k]
        x = spec.heldout(size=size)[0].numpy()
        sess = _session(_with_outputs(clean, [c.output for c in cands]))
        feats = sess.run([c.output for c in cands], {sess.get_inputs()[0].name: x})
        graphs, per_node = {}, []
        for c, f in zip(cands, feats):
            if c.channels not in graphs:
                graphs[c.channels] = _session(_standalone(c.channels, cfg))
            out = graphs[c.channels].run(None, {"x": f})[0]
            ref = asvp_reference(torch.from_numpy(f), cfg)
            per_node.append({"node": c.name, "channels": c.channels, "rel_err": _rel_err(out, ref),
                             "rel_to_perturbation": _rel_to_perturbation(out, ref, f)})
        worst = max(per_node, key=lambda r: r["rel_err"])
        rows.append({"task": task, "candidates": len(per_node), "images": int(x.shape[0]),
                     "worst_rel_err": worst["rel_err"], "worst_node": worst["node"],
                     "median_rel_err": float(np.median([r["rel_err"] for r in per_node])),
                     "worst_rel_to_perturbation": max(r["rel_to_perturbation"] for r in per_node),
                     "nodes": per_node})
    return rows


def _standalone(channels: int, cfg):
    from asvp.graph_passes.subgraph import standalone_model

    return standalone_model(channels, cfg)


def _with_outputs(model, names):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for n in names:
        m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return m


def accuracy_table(tasks=TASKS, iters_grid=ITERS_GRID, size: int = 96, workdir: Path | None = None) -> list[dict]:
    """Worst per-image relative error of the subgraph (ONNX Runtime) vs asvp_reference, per teacher and iters."""
    import torch

    from asvp.config import AsvpConfig
    from asvp.graph_passes import select
    from asvp.method import asvp_reference

    rows = []
    for task, spec, clean in exported_teachers(tasks, workdir):
        if clean is None:
            rows.append({"task": task, "skipped": "no bundled weights"})
            continue
        (feat,) = select.resolve(clean, None)
        x = spec.heldout(size=size)[0].numpy()
        sess = _session(_with_outputs(clean, [feat.output]))
        f = sess.run([feat.output], {sess.get_inputs()[0].name: x})[0]
        m = torch.from_numpy(f).double().reshape(f.shape[0], f.shape[1], -1)
        s = torch.linalg.svdvals(m)
        row = {"task": task, "node": feat.name, "channels": feat.channels, "shape": list(f.shape),
               "s5_over_s4_max": float((s[:, 4] / s[:, 3]).max()), "errors": {}}
        ref = asvp_reference(torch.from_numpy(f), AsvpConfig())  # iters does not enter the reference
        for iters in iters_grid:
            cfg = AsvpConfig(iters=iters)
            model = _standalone(feat.channels, cfg)
            out = _session(model).run(None, {"x": f})[0]
            row["errors"][str(iters)] = _rel_err(out, ref)
            row.setdefault("nodes", {})[str(iters)] = len(model.graph.node)
        rows.append(row)
    return rows


def _spectrum(scenario: str, gap: float, channels: int) -> np.ndarray:
    sv = 0.3 * 0.8 ** np.arange(channels)
    sv[:4] = [6.0, 3.0, 2.0, 1.5]
    if scenario == "pair":  # s_5 = (1 - gap) s_4
        sv[4] = 1.5 * (1.0 - gap)
    else:  # "cluster": s_4 .. s_12 spread geometrically over [1.5 (1 - gap), 1.5]
        sv[3:12] = 1.5 * (1.0 - gap) ** (np.arange(9) / 8)
    return sv


def tiny_gap_table(gaps=(0.5, 0.2, 0.1, 0.03, 0.01, 1e-3, 0.0), iters=None, channels: int = 32, side: int = 48,
                   seed: int = 0) -> list[dict]:
    """Synthetic features with a closing gap after s_4 (k = 4): how the subgraph's error grows.

    "pair": s_5 = (1 - gap) s_4; "cluster": s_4..s_12 within a factor (1 - gap), which also closes the gap at the
    oversampled block's edge (kb = 8). `vec_err` is the usual output error; `sv_err` the error of the output's
    singular values, which stay well defined (h s_1..h s_k, s_{k+1}, ...) even where U_k is not."""
    import torch

    from asvp.config import AsvpConfig
    from asvp.method import asvp_reference

    rng = np.random.default_rng(seed)
    svals = lambda a: torch.linalg.svdvals(torch.as_tensor(np.asarray(a)).double().reshape(a.shape[0], channels, -1))
    rows = []
    for scenario, mode in (("pair", "fixed"), ("pair", "adaptive"), ("cluster", "fixed")):
        # tau = 0.95 makes the adaptive k equal 4 here, so the gap at k is the one that matters in both modes.
        cfg = AsvpConfig(k_mode=mode, tau=0.95) if iters is None else AsvpConfig(k_mode=mode, tau=0.95, iters=iters)
        sess = _session(_standalone(channels, cfg))
        for gap in gaps:
            feats = []
            for _ in range(4):
                u, _ = np.linalg.qr(rng.standard_normal((channels, channels)))
                v, _ = np.linalg.qr(rng.standard_normal((side * side, channels)))
                feats.append((u * _spectrum(scenario, gap, channels)) @ v.T)
            f = np.stack(feats).reshape(4, channels, side, side).astype(np.float32)
            out = sess.run(None, {"x": f})[0]
            ref = asvp_reference(torch.from_numpy(f), cfg)
            rows.append({"scenario": scenario, "k_mode": mode, "gap": gap, "iters": cfg.iters,
                         "vec_err": _rel_err(out, ref), "sv_err": _rel_err(svals(out), svals(ref))})
    return rows


def tiny_gap_markdown(rows: list[dict]) -> str:
    gaps = sorted({r["gap"] for r in rows}, reverse=True)
    lines = ["Closing spectral gap (synthetic, C=32, HW=48x48, k=4, tau=0.95, iters=%d; s = 6, 3, 2, 1.5, ... with "
             "pair: s_5 = (1 - gap) s_4, cluster: s_4..s_12 within (1 - gap); worst of 4 samples):" % rows[0]["iters"], "",
             "| case | k_mode | error | " + " | ".join(f"gap={g:g}" for g in gaps) + " |", "|---|---|---|" + "---|" * len(gaps)]
    for scenario, mode in dict.fromkeys((r["scenario"], r["k_mode"]) for r in rows):
        for key, label in (("vec_err", "output"), ("sv_err", "singular values")):
            vals = {r["gap"]: r[key] for r in rows if r["k_mode"] == mode and r["scenario"] == scenario}
            lines.append(f"| {scenario} | {mode} | {label} | " + " | ".join(f"{vals[g]:.1e}" for g in gaps) + " |")
    return "\n".join(lines)


def run(out_path: str | Path = DEFAULT_OUT, repeats: int = 20, size: int = 256, accuracy: bool = True) -> dict:
    import onnx
    import torch

    from asvp import api
    from asvp.config import AsvpConfig
    from asvp.tasks.data import heldout_crops
    from asvp.graph_passes.defend import defend_model
    from asvp.io import write_text_atomic
    from asvp.method import asvp_exact, asvp_reference

    cfg = AsvpConfig()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clean_path = api.export("sr", tmp / "sr.onnx").path
        clean = onnx.load(clean_path)
        one, info1 = defend_model(clean, None, cfg)
        three, info3 = defend_model(clean, THREE_NODES, cfg)
        tap, info_tap = defend_model(clean, THREE_NODES, cfg.with_(placement="tap"))

        # A real photograph: a size x size crop of a held-out image (never seen in training).
        x = heldout_crops(size, per_image=1)[:1].numpy()
        assert x.shape == (1, 3, size, size), x.shape
        sessions = {"clean": _session(clean), "defended_1": _session(one), "defended_3": _session(three)}
        feeds = {n: (s, {s.get_inputs()[0].name: x}) for n, s in sessions.items()}
        cpu: dict = {}
        times = interleaved({n: (lambda s=s, f=f: s.run(None, f)) for n, (s, f) in feeds.items()}, repeats, cpu=cpu)
        lat, lat_cpu = {n: _stats(v) for n, v in times.items()}, {n: _stats(v) for n, v in cpu.items()}
        ratio = {n: lat[n]["median_ms"] / lat["clean"]["median_ms"] for n in ("defended_1", "defended_3")}
        ratio_cpu = {n: lat_cpu[n]["median_ms"] / lat_cpu["clean"]["median_ms"] for n in ("defended_1", "defended_3")}

        # Accuracy at this size, every defended node (tap placement exposes the perturbed features).
        feats = [r["tensor"] for r in info_tap.nodes]
        s_tap = _session(_with_outputs(tap, feats))
        outs = dict(zip([o.name for o in s_tap.get_outputs()], s_tap.run(None, {s_tap.get_inputs()[0].name: x})))
        node_err = [{"node": r["node"], "channels": r["channels"],
                     "rel_err": _rel_err(outs[r["tap_output"]], asvp_reference(torch.from_numpy(outs[r["tensor"]]), cfg))}
                    for r in info_tap.nodes]

        # The subgraph alone vs exact decompositions of the same feature (the automatic node).
        auto_tensor = info1.nodes[0]["tensor"]
        f = outs[auto_tensor]
        sub = _session(_standalone(f.shape[1], cfg))
        ft = torch.from_numpy(f)
        mat = ft.reshape(f.shape[1], -1)
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(THREADS)  # like the ONNX Runtime sessions
        alone_cpu: dict = {}
        alone = interleaved({
            "subgraph_ort": lambda: sub.run(None, {"x": f}),
            "torch_svd_f32": lambda: torch.linalg.svd(mat, full_matrices=False),
            "asvp_exact_f64": lambda: asvp_exact(ft, cfg),
        }, repeats, cpu=alone_cpu)
        torch.set_num_threads(torch_threads)
        alone_stats = {n: _stats(v) for n, v in alone.items()}
        alone_cpu_stats = {n: _stats(v) for n, v in alone_cpu.items()}

    res = {
        "benchmark": "graph_passes",
        "machine": {"threads": THREADS, "python": sys.version.split()[0],
                    "onnxruntime": __import__("onnxruntime").__version__, "torch": torch.__version__},
        "model": "sr (EDSRLite x2, bundled teacher)", "input_shape": list(x.shape), "repeats": repeats,
        "config": cfg.to_dict(),
        "nodes_one": [r["node"] for r in info1.nodes], "nodes_three": [r["node"] for r in info3.nodes],
        "inserted_onnx_nodes": {"defended_1": info1.inserted_nodes, "defended_3": info3.inserted_nodes},
        "latency": lat, "ratio_vs_clean": ratio, "latency_cpu": lat_cpu, "ratio_vs_clean_cpu": ratio_cpu,
        "feature_shape": list(f.shape),
        "feature_only": alone_stats, "feature_only_cpu": alone_cpu_stats,
        "subgraph_vs_svd": alone_cpu_stats["subgraph_ort"]["median_ms"] / alone_cpu_stats["torch_svd_f32"]["median_ms"],
        "rel_err_256": node_err,
    }
    res["graph_size"] = graph_size()
    if accuracy:
        res["cost_breakdown"] = cost_breakdown(repeats=repeats)
        res["apply_forms"] = apply_forms(repeats=2 * repeats)
        res["candidate_accuracy"] = candidate_accuracy()
        res["accuracy_vs_iters"] = accuracy_table()
        res["tiny_gap"] = tiny_gap_table()
    out_path = Path(out_path)
    write_text_atomic(out_path, json.dumps(res, indent=2) + "\n")
    return res


def gram_floor_model(model, features: list[tuple[str, int]], apply: bool = False, k: int = 4):
    """A floor of any exact ASVP in tap placement, as a model. For every (tensor, C) in `features`: its Gram matrix
    M M^T, M = the feature as [N, C, H*W] (the subgraph's own Reshape and MatMul, which ONNX Runtime fuses into one
    FusedMatMul), as an extra graph output `floor<i>/gram`, and

    * apply=False: the feature itself as an extra output (the tap's copy out of ONNX Runtime's blocked layout);
    * apply=True: instead, `floor<i>/out`, the feature after the subgraph's own apply step
      (graph_passes.subgraph.apply_update) with a fixed rank-k U and weights, as the tap outputs it: everything of
      the defence except the eigensolver on the C x C Gram and its small ops.

    No eigensolver: what remains when it is free."""
    import onnx
    import onnx_graphsurgeon as gs

    from asvp.graph_passes.expose import expose_tensors
    from asvp.graph_passes.subgraph import Emitter, apply_update

    graph = gs.import_onnx(expose_tensors(model, [t for t, _ in features]) if not apply else
                           onnx.shape_inference.infer_shapes(model))
    tensors = graph.tensors()
    rng = np.random.default_rng(0)
    for i, (name, c) in enumerate(features):
        e, x = Emitter(graph, f"floor{i}"), tensors[name]
        m = e.op("Reshape", [x, e.const("shape_nc_", np.array([0, c, -1], np.int64))], label="to_matrix")
        outs = [("gram", e.op("MatMul", [m, e.transpose(m)], label="gram"), ["n", c, c])]
        if apply:
            u = np.linalg.qr(rng.standard_normal((c, k)))[0].astype(np.float32)[None]
            outs.append(("out", apply_update(e, x, m, e.const("u", u), e.const("scaled", 0.5 * u), c),
                         ["n", c, "h", "w"]))
        for label, var, shape in outs:
            var.name, var.dtype, var.shape = f"floor{i}/{label}", np.float32, shape
            graph.outputs.append(var)
    out = gs.export_onnx(graph.cleanup().toposort())
    out.ir_version = model.ir_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(out)
    return out


def spread(names: list[str], count: int) -> list[str]:
    """`count` candidate nodes spread evenly through the network (first, middle, last ...)."""
    if count >= len(names):
        return names
    return [names[round(i * (len(names) - 1) / (count - 1))] for i in range(count)] if count > 1 else [names[len(names) // 2]]


BREAKDOWN_PARTS = ("gram", "apply", "output", "small", "reorder", "rest")


def _category(name: str) -> str:
    """ASVP's parts by the node labels graph_passes.subgraph gives (ONNX Runtime keeps them in fused nodes' names)."""
    if name.startswith("asvp/"):
        for part, label in (("gram", "/gram_"), ("apply", "/apply_"), ("output", "/to_feature_")):
            if label in name:
                return part
        return "small"
    return "reorder" if name.startswith(("ReorderOutput", "ReorderInput")) else "rest"


def _kernel_means(profile_json: str, skip: int) -> dict[str, float]:
    """node name -> mean kernel wall time (ms) over the profiled runs after the first `skip`."""
    with open(profile_json) as fh:
        events = json.load(fh)
    Path(profile_json).unlink()
    per: dict[str, list[float]] = {}
    for ev in events:
        if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            per.setdefault(ev["name"][: -len("_kernel_time")], []).append(ev["dur"] / 1e3)
    return {n: statistics.fmean(v[skip:] or v) for n, v in per.items()}


def cost_breakdown(tasks=TASKS, counts=(1, 3), placement: str = "tap", size: int = 256, repeats: int = 20,
                   warmup: int = 3) -> list[dict]:
    """Where a defended teacher's extra CPU time goes: ONNX Runtime's per-node profile (enable_profiling) of the
    clean and the defended model, run alternately. Parts: the Gram product, the apply (the products over M), the
    output node (dense: the Reshape, a full copy when it is a graph output; low rank: the Add that writes it), the
    ~115 small C x C / kb x kb nodes, ONNX Runtime's NCHWc layout reorders (their difference from the clean
    model: the feature must leave the blocked layout the convolutions use), and the difference in the rest of the
    network. The profiler's kernel times are wall-clock; on a shared machine time-slicing inflates them, in
    expectation by the same factor for every kernel, so each node's mean time is scaled by its session's measured
    thread CPU time over its summed mean kernel time (one intra-op thread): the parts are CPU ms. Profiling adds
    a little per node, which the scaling spreads over the kernels."""
    import onnxruntime as ort

    from asvp.config import AsvpConfig
    from asvp.graph_passes import select
    from asvp.graph_passes.defend import defend_model
    from asvp.tasks.data import heldout_crops

    x = heldout_crops(size, per_image=1)[:1].numpy()
    rows = []
    for task, _, clean in exported_teachers(tasks):
        if clean is None:
            continue
        cands = [c for c in select.candidates(clean) if c.channels > AsvpConfig().k]
        for count in counts:
            selectors = None if count == 1 else spread([c.name for c in cands], count)
            defended, info = defend_model(clean, selectors, AsvpConfig(placement=placement))
            sessions = {}
            with tempfile.TemporaryDirectory() as tmp:
                for name, model in (("clean", clean), ("defended", defended)):
                    so = ort.SessionOptions()
                    so.intra_op_num_threads, so.inter_op_num_threads = THREADS, 1
                    so.enable_profiling, so.profile_file_prefix = True, str(Path(tmp) / name)
                    sessions[name] = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
                feed = {sessions["clean"].get_inputs()[0].name: x}
                cpu: dict = {}
                interleaved({n: (lambda s=s: s.run(None, feed)) for n, s in sessions.items()}, repeats, warmup, cpu=cpu)
                med = {}
                for n, sess in sessions.items():  # warm-up runs are profiled too: skip them
                    wall = _kernel_means(sess.end_profiling(), warmup)
                    scale = statistics.fmean(cpu[n]) / sum(wall.values())
                    med[n] = {node: ms * scale for node, ms in wall.items()}
            parts = dict.fromkeys(BREAKDOWN_PARTS, 0.0)
            for node, ms in med["defended"].items():
                part = _category(node)
                parts[part] += ms - (med["clean"].get(node, 0.0) if part in ("reorder", "rest") else 0.0)
            for node, ms in med["clean"].items():  # clean nodes the defended model does not run
                if node not in med["defended"]:
                    parts[_category(node)] -= ms
            clean_ms = statistics.fmean(cpu["clean"])
            rows.append({"task": task, "nodes": count, "placement": placement, "selectors": [r["node"] for r in info.nodes],
                         "channels": [r["channels"] for r in info.nodes], "shape": list(x.shape), "repeats": repeats,
                         "threads": THREADS, "clean_cpu_ms": clean_ms, "defended_cpu_ms": statistics.fmean(cpu["defended"]),
                         "parts_ms": parts, "teacher_macs": _conv_macs(clean, x.shape),
                         "gram_macs": sum(c * c * x.shape[2] * x.shape[3] * a for c, a in
                                          ((f.channels, f.area) for f in cands if f.name in [r["node"] for r in info.nodes]))})
    return rows


def _conv_macs(model, shape) -> int:
    """Multiply-accumulates of the model's Conv/ConvTranspose nodes at input `shape` (ONNX shape inference)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for d, v in zip(m.graph.input[0].type.tensor_type.shape.dim, shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    weights = {i.name: list(i.dims) for i in m.graph.initializer}
    macs = 0
    for n in m.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in weights:
            spatial = dims[n.output[0]] if n.op_type == "Conv" else dims[n.input[0]]
            macs += int(np.prod(spatial)) * int(np.prod(weights[n.input[1]][1:]))
    return macs


def breakdown_markdown(rows: list[dict]) -> str:
    lines = ["Where the extra time goes (ONNX Runtime per-node profile of %d alternating runs, %d thread, input %s, "
             "%s placement; each node's mean kernel time scaled to its session's thread CPU time; CPU ms, and %% of the "
             "clean teacher's CPU time; profiling itself adds a little per node):" % (
                 rows[0]["repeats"], rows[0]["threads"], "x".join(map(str, rows[0]["shape"])), rows[0]["placement"]), "",
             "| teacher | nodes (C) | clean CPU ms | Gram | apply | output node | small ops | layout reorders | rest of network | "
             "total extra | Gram MACs / teacher MACs |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c, p = r["clean_cpu_ms"], r["parts_ms"]
        cell = lambda v: f"{v:.2f} ({100 * v / c:.1f}%)"
        lines.append(f"| {r['task']} | {r['nodes']} ({', '.join(map(str, r['channels']))}) | {c:.1f} | "
                     + " | ".join(cell(p[k]) for k in BREAKDOWN_PARTS) + f" | {cell(sum(p.values()))} | "
                     f"{100 * r['gram_macs'] / r['teacher_macs']:.1f}% |")
    return "\n".join(lines)


APPLY_FORMS = ("dense", "low rank, 3-D sum", "low rank, 4-D sum")


def _apply_model(form: str, channels: int, k: int, placement: str):
    """The apply step alone: inputs x [N, C, H, W], P = I + U W U^T [N, C, C], U, S = U W [N, C, k]; output the
    perturbed feature (tap: as a graph output; inline: through a Relu standing for the next layer)."""
    from onnx import TensorProto, helper

    node = helper.make_node
    shape3 = helper.make_tensor("shape3", TensorProto.INT64, [3], [0, channels, -1])
    head = [node("Reshape", ["x", "shape3"], ["m"]), node("Shape", ["x"], ["sx"])]
    if form == "dense":
        body = [node("MatMul", ["p", "m"], ["pm"]), node("Reshape", ["pm", "sx"], ["y"])]
    else:
        body = [node("Transpose", ["u"], ["ut"], perm=[0, 2, 1]), node("MatMul", ["ut", "m"], ["t"]),
                node("MatMul", ["s", "t"], ["d"])]
        body += ([node("Add", ["m", "d"], ["o"]), node("Reshape", ["o", "sx"], ["y"])] if form == "low rank, 3-D sum"
                 else [node("Reshape", ["d", "sx"], ["d4"]), node("Add", ["x", "d4"], ["y"])])
    out = "y"
    if placement == "inline":
        body.append(node("Relu", ["y"], ["z"]))
        out = "z"
    f = lambda name, dims: helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
    inputs = [f("x", ["N", channels, "H", "W"]), f("p", ["N", channels, channels]), f("u", ["N", channels, k]),
              f("s", ["N", channels, k])]
    graph = helper.make_graph(head + body, "apply", inputs, [f(out, ["N", channels, "H", "W"])], [shape3])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def apply_forms(shapes=((16, 256), (24, 256), (32, 256), (48, 256), (64, 256), (96, 64)), k: int = 4,
                repeats: int = 40) -> list[dict]:
    """CPU time of the apply step's forms, both placements, interleaved per shape (why DENSE_APPLY_MAX_C = 32)."""
    rng = np.random.default_rng(0)
    rows = []
    for c, side in shapes:
        feeds = {"x": rng.random((1, c, side, side), dtype=np.float32),
                 "p": rng.standard_normal((1, c, c)).astype(np.float32),
                 "u": rng.standard_normal((1, c, k)).astype(np.float32)}
        feeds["s"] = feeds["u"] * 0.5
        sessions = {(form, pl): _session(_apply_model(form, c, k, pl)) for form in APPLY_FORMS for pl in ("tap", "inline")}
        runners = {key: (lambda s=s: s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()}))
                   for key, s in sessions.items()}
        cpu: dict = {}
        interleaved(runners, repeats, cpu=cpu)
        for (form, pl), v in cpu.items():
            rows.append({"channels": c, "side": side, "form": form, "placement": pl, "cpu_median_ms": statistics.median(v)})
    return rows


def apply_forms_markdown(rows: list[dict]) -> str:
    lines = ["The apply step alone (median CPU ms, %s): x + U W U^T M as one dense C x C product, or low rank with "
             "the sum taken on the 3-D matrix or on the 4-D feature:" % f"{THREADS} thread", "",
             "| C | H x W | " + " | ".join(f"{f}, {pl}" for pl in ("tap", "inline") for f in APPLY_FORMS) + " |",
             "|---|---|" + "---|" * (2 * len(APPLY_FORMS))]
    for c, side in dict.fromkeys((r["channels"], r["side"]) for r in rows):
        v = {(r["form"], r["placement"]): r["cpu_median_ms"] for r in rows if r["channels"] == c and r["side"] == side}
        lines.append(f"| {c} | {side}x{side} | " + " | ".join(f"{v[(f, pl)]:.2f}" for pl in ("tap", "inline")
                                                              for f in APPLY_FORMS) + " |")
    return "\n".join(lines)


def accuracy_markdown(table: list[dict]) -> str:
    rows = [r for r in table if "errors" in r]
    grid = list(rows[0]["errors"]) if rows else []
    lines = ["Error vs iterations (worst held-out image, automatic node, ONNX Runtime float32 vs float64 SVD):", "",
             "| teacher | node | C | max s5/s4 | " + " | ".join(f"iters={i}" for i in grid) + " |",
             "|---|---|---|---|" + "---|" * len(grid)]
    for r in rows:
        lines.append(f"| {r['task']} | `{r['node']}` | {r['channels']} | {r['s5_over_s4_max']:.3f} | "
                     + " | ".join(f"{r['errors'][i]:.1e}" for i in grid) + " |")
    if rows:
        lines.append(f"| ONNX nodes (C={rows[0]['channels']}) | | | | " + " | ".join(str(rows[0]["nodes"][i]) for i in grid) + " |")
    lines += [f"\n{r['task']}: skipped ({r['skipped']})" for r in table if "skipped" in r]
    return "\n".join(lines)


def graph_size_markdown(rows: list[dict]) -> str:
    lines = ["Subgraph size per defended feature (ONNX nodes / longest chain of dependent nodes; k = 4):", "",
             "| C | adaptive k: nodes | chain | fixed k: nodes | chain |", "|---|---|---|---|---|"]
    for c in dict.fromkeys(r["channels"] for r in rows):
        a = next(r for r in rows if r["channels"] == c and r["k_mode"] == "adaptive")
        f = next(r for r in rows if r["channels"] == c and r["k_mode"] == "fixed")
        lines.append(f"| {c} | {a['nodes']} | {a['longest_chain']} | {f['nodes']} | {f['longest_chain']} |")
    return "\n".join(lines)


def candidate_accuracy_markdown(rows: list[dict]) -> str:
    ok = [r for r in rows if "candidates" in r]
    lines = ["Error at every candidate feature (held-out images, size 96, default config, ONNX Runtime float32 vs "
             "float64 SVD; worst over the teacher's candidates and images):", "",
             "| teacher | candidates | worst ||out - ref|| / ||ref|| | at | median | worst ||out - ref|| / ||ref - F|| |",
             "|---|---|---|---|---|---|"]
    for r in ok:
        lines.append(f"| {r['task']} | {r['candidates']} | {r['worst_rel_err']:.1e} | `{r['worst_node']}` | "
                     f"{r['median_rel_err']:.1e} | {r['worst_rel_to_perturbation']:.1e} |")
    lines += [f"\n{r['task']}: skipped ({r['skipped']})" for r in rows if "skipped" in r]
    return "\n".join(lines)


def markdown(res: dict) -> str:
    lines = [f"## graph_passes: ASVP subgraph on ONNX Runtime CPU ({res['model']}, input {'x'.join(map(str, res['input_shape']))}, "
             f"{res['repeats']} interleaved repeats, {res['machine'].get('threads', '?')} thread; CPU = the inference "
             "thread's CPU time, wall = wall-clock time on the shared machine)", "",
             "| model | CPU median ms | CPU vs clean | wall median ms | wall p90 ms | wall vs clean |", "|---|---|---|---|---|---|"]
    for n, s in res["latency"].items():
        r, rc, sc = res["ratio_vs_clean"].get(n), res["ratio_vs_clean_cpu"].get(n), res["latency_cpu"][n]
        lines.append(f"| {n} | {sc['median_ms']:.1f} | {'%.3f' % rc if rc else '1'} | {s['median_ms']:.1f} | "
                     f"{s['p90_ms']:.1f} | {'%.3f' % r if r else '1'} |")
    lines += ["", f"Defended nodes: 1 = {res['nodes_one']}, 3 = {res['nodes_three']}; inserted ONNX nodes "
              f"{res['inserted_onnx_nodes']}.", "",
              f"Feature {res['feature_shape']} alone (median CPU ms): " + ", ".join(
                  f"{n} {s['median_ms']:.2f}" for n, s in res["feature_only_cpu"].items())
              + f"; subgraph / torch.linalg.svd = {res['subgraph_vs_svd']:.3f}.", "",
              "Relative error vs float64 SVD reference at this size: " + ", ".join(
                  f"{e['node']} {e['rel_err']:.1e}" for e in res["rel_err_256"]) + "."]
    if res.get("cost_breakdown"):
        lines += ["", breakdown_markdown(res["cost_breakdown"])]
    if res.get("apply_forms"):
        lines += ["", apply_forms_markdown(res["apply_forms"])]
    if res.get("graph_size"):
        lines += ["", graph_size_markdown(res["graph_size"])]
    if res.get("candidate_accuracy"):
        lines += ["", candidate_accuracy_markdown(res["candidate_accuracy"])]
    if res.get("accuracy_vs_iters"):
        lines += ["", accuracy_markdown(res["accuracy_vs_iters"])]
    if res.get("tiny_gap"):
        lines += ["", tiny_gap_markdown(res["tiny_gap"])]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help="results JSON (default %(default)s)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--no-accuracy", action="store_true", help="skip the accuracy tables (size table and timings only)")
    p.add_argument("--accuracy-only", action="store_true",
                   help="only print the size, every-candidate error, error-vs-iterations and tiny-gap tables")
    p.add_argument("--breakdown", action="store_true",
                   help="only print where each teacher's extra time goes (ONNX Runtime per-node profile, 1 and 3 nodes)")
    p.add_argument("--placement", choices=("tap", "inline"), default="tap", help="placement for --breakdown")
    p.add_argument("--apply-forms", action="store_true",
                   help="only print the CPU time of the apply step's forms (dense / low rank) by C and placement")
    a = p.parse_args(argv)
    if a.apply_forms:
        print(apply_forms_markdown(apply_forms(repeats=a.repeats)))
        return 0
    if a.breakdown:
        print(breakdown_markdown(cost_breakdown(placement=a.placement, repeats=a.repeats)))
        return 0
    if a.accuracy_only:
        print(graph_size_markdown(graph_size()))
        print()
        print(candidate_accuracy_markdown(candidate_accuracy()))
        print()
        print(accuracy_markdown(accuracy_table()))
        print()
        print(tiny_gap_markdown(tiny_gap_table()))
        return 0
    res = run(a.out, repeats=a.repeats, size=a.size, accuracy=not a.no_accuracy)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
