"""The architecture table: every third-party restorer asvp was tried on, end to end, with tiny random weights.

    python -m benchmarks.architectures                     # every architecture; rewrites the doc and the JSON
    python -m benchmarks.architectures --archs SwinIR,HAT  # some of them (prints the rows; writes nothing)

For each architecture of benchmarks/tiny_architectures.py: save the state dict as a .pth, then
1. export it as `asvp export x.pth` does (asvp.api.export). When the export refuses and its message names an
   option (`--static-batch`), export again with it: the row's "flags" are what the export needed;
2. list the candidate feature maps (asvp.api.list_nodes) and the automatic node;
3. defend at the automatic node with tap and with inline placement (asvp.api.defend) and run both defended models
   at a size the export never traced: tap must leave the output bit-identical, inline must stay finite;
4. compare the exported model with torch at two new sizes (non-square; one with odd sides where the size
   multiple allows it) on real photographs.

Writes docs/architectures.md (benchmarks/architecture_doc.py renders the table and this command) and benchmarks/results/architectures.json (every row,
the seconds each took, the machine). tests/exporter/test_architecture_table.py runs the same rows in CI and checks
that the doc's deterministic columns match them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import onnx
import torch

from asvp import api
from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.exporter.parity import PARITY_ATOL, photo_batch
from asvp.graph_passes.select import automatic
from asvp.io import write_text_atomic
from asvp.onnx_utils import get_metadata, load_model
from asvp.options import ExportOptions
from asvp.runtime.engines.sessions import ort_session

from benchmarks import provenance, tiny_architectures
from benchmarks.architecture_doc import COMMAND, DOC, HEADER, render, surprises, table_line

PROG = "architectures.py"
JSON = provenance.ROOT / "benchmarks" / "results" / "architectures.json"
PATCH_KEY = "asvp.export_patch"  # written by the exporter when it patched the model to keep a dimension dynamic
ADVICE = {"--static-batch": "static_batch"}  # export options its refusals may name, that this harness follows


def new_sizes(min_size: int, multiple: int, batch: bool) -> list[tuple[int, int, int]]:
    """Two (N, H, W) the export's own parity check never ran (its sides start at 32): non-square, smaller than the
    export's, the first with odd sides when the size multiple is 1, the second at batch 2 when the batch is dynamic."""
    m = max(multiple, 1)
    k = -(-max(min_size, 16) // m)
    if m == 1:
        h = k + (k % 2 == 0)
        return [(1, h, h + 6), (2 if batch else 1, h + 7, h + 2)]
    return [(1, m * k, m * (k + 1)), (2 if batch else 1, m * (k + 1), m * k)]


@contextlib.contextmanager
def captured_stdout(path: Path):
    """Everything written to the process's stdout (file descriptor 1: torch's C++ prints too) goes to `path`."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(path, "wb") as f:
            os.dup2(f.fileno(), 1)
            yield
            sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def options(flags) -> ExportOptions:
    return ExportOptions(**{ADVICE[f]: True for f in flags})


def export(name: str, pth: Path, out: Path):
    """asvp.api.export of a spandrel checkpoint as a user would run `asvp export x.pth`, following the option its
    refusal names. An architecture declared to need options (tiny_architectures.FLAGS) is first tried with
    TorchScript alone and without them (cheap): when that passes it is the export `auto` makes, else the
    declared options are used. Returns (ExportResult, the flags it needed, lines printed on stdout)."""
    log, lines = out.with_suffix(".stdout"), 0
    declared = list(tiny_architectures.FLAGS.get(name, ()))
    tries = [(ExportOptions(exporter="torchscript"), [])] if declared else []
    tries.append((options(declared), declared))
    while True:
        opts, flags = tries.pop(0)
        try:
            with captured_stdout(log):
                return api.export(str(pth), out, opts, force=True), flags, lines + _count_lines(log)
        except AsvpError as exc:
            lines += _count_lines(log)
            advice = [f for f in ADVICE if f in str(exc) and f not in flags]
            if not tries and not advice:
                raise
            if not tries:
                tries.append((options(flags + advice[:1]), flags + advice[:1]))


def _count_lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def torch_parity(model: torch.nn.Module, onnx_path: Path, shapes) -> float:
    """Max |ONNX Runtime - torch| over real photographs at `shapes`."""
    sess, worst = ort_session(str(onnx_path), threads=1), 0.0
    for n, h, w in shapes:
        x = photo_batch(n, h, w)
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            want = model(x.clone()).numpy()  # clone: some architectures scale their input in place (RCAN)
        if got.shape != want.shape:
            raise AsvpError(f"output shape {got.shape} != torch's {want.shape} at {n}x3x{h}x{w}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def defends(onnx_path: Path, work: Path, shape) -> dict:
    """Defend at the automatic node, tap and inline; run both at `shape` beside the clean model."""
    n, h, w = shape
    x = photo_batch(n, h, w).numpy()
    clean = ort_session(str(onnx_path), threads=1).run(None, {"input": x})[0]
    result = {}
    for placement in ("tap", "inline"):
        out = work / f"{placement}.onnx"
        res = api.defend(onnx_path, out, config=AsvpConfig(placement=placement), force=True)
        outs = ort_session(str(out), threads=1).run(None, {"input": x})
        if placement == "tap":
            onnx.checker.check_model(str(out), full_check=True)
            ok = np.array_equal(outs[0], clean) and len(outs) > 1 and outs[1].shape[0] == n and \
                all(np.isfinite(o).all() for o in outs)
        else:
            ok = outs[0].shape == clean.shape and bool(np.isfinite(outs[0]).all())
        result[placement] = bool(ok)
        result["defended_node"] = res.nodes[0]["node"]
    return result


def run_one(name: str, work: Path) -> dict:
    """One architecture's row (see the module docstring); `error` says where it stopped, if it did."""
    t0 = time.perf_counter()
    row = {"architecture": name, "issue": tiny_architectures.issue(name), "exporter": "-", "dynamic": "-",
           "flags": "-", "patch": "-", "candidates": 0, "automatic": "-", "parity": None, "parity_sizes": [],
           "tolerance": PARITY_ATOL, "tap": False, "inline": False, "error": None}
    model = tiny_architectures.build(name)
    pth, onnx_path = work / "m.pth", work / "m.onnx"
    torch.save(model.state_dict(), pth)
    try:
        res, flags, printed = export(name, pth, onnx_path)
        meta = get_metadata(load_model(onnx_path))
        row.update(exporter=res.exporter, dynamic=",".join(res.dynamic or []) or "none",
                   flags=" ".join(flags) or "-", patch=meta.get(PATCH_KEY) or "-", tolerance=res.parity_tolerance,
                   export_parity=res.parity_max_abs_diff, export_sizes=[list(s) for s in res.parity_inputs],
                   scale=res.scale, min_size=res.min_size, size_multiple=res.size_multiple, teacher=res.teacher,
                   meta_exporter=meta.get("asvp.exporter"), export_stdout_lines=printed)
        nodes = api.list_nodes(onnx_path)
        row["candidates"] = len(nodes)
        row["candidate_names"] = [n.name for n in nodes]
        row["candidate_batch"] = sorted({str(n.shape[0]) for n in nodes})
        row["min_channels"] = min((n.channels for n in nodes), default=0)
        if not nodes:
            raise AsvpError("no candidate feature map")
        row["automatic"] = automatic(nodes).name
        sizes = new_sizes(res.min_size, res.size_multiple, "N" in (res.dynamic or []))
        row["parity_sizes"] = [[n, 3, h, w] for n, h, w in sizes]
        row["parity"] = torch_parity(model, onnx_path, sizes)
        row.update(defends(onnx_path, work, sizes[-1]))
    except Exception as exc:  # noqa: BLE001 - a row records where it stopped; the next architecture still runs
        row["error"] = str(exc) if isinstance(exc, AsvpError) else \
            f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def row(name: str) -> dict:
    """run_one in a fresh temporary folder, torch on one thread: these models are tiny, and on a shared machine
    more threads only wait for each other."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        return run_one(name, Path(tmp))


def run(archs=None, jobs: int = 2, progress: bool = True) -> dict:
    """Every row (or those of `archs`), in table order, computed by `jobs` worker processes (1: in this one)."""
    t0, names = time.perf_counter(), list(archs or tiny_architectures.names())
    if jobs <= 1:
        threads = torch.get_num_threads()
        try:
            rows = [_shown(row(n), progress) for n in names]
        finally:
            torch.set_num_threads(threads)
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            done = [_shown(f.result(), progress) for f in as_completed([pool.submit(row, n) for n in names])]
        rows = sorted(done, key=lambda r: names.index(r["architecture"]))
    return {"rows": rows, "seconds": round(time.perf_counter() - t0, 1), "jobs": jobs, "torch": torch.__version__,
            "command": COMMAND, "commit": provenance.commit()}


def _shown(r: dict, progress: bool) -> dict:
    if progress:
        print(f"  {r['architecture']}: {r['error'] or 'ok'} ({r['seconds']} s)", file=sys.stderr, flush=True)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=None, help="comma-separated architectures (default: all; then the doc and "
                                                  "the JSON are rewritten)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default %(default)s)")
    a = ap.parse_args(argv)
    try:
        archs = provenance.parse_list(a.archs, str, "--archs") if a.archs else None
        known = tiny_architectures.names()
        bad = [x for x in archs or [] if x not in known]
        if bad:
            raise AsvpError(f"--archs: {bad[0]} is not one of {', '.join(known)}")
    except AsvpError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    results = run(archs, jobs=max(1, a.jobs))
    if archs:
        print("\n".join([HEADER, *map(table_line, results["rows"])]))
        return 0
    write_text_atomic(JSON, json.dumps(results, indent=2) + "\n")
    write_text_atomic(DOC, render(results))
    print(f"wrote {provenance.shown(DOC)} and {provenance.shown(JSON)} in {results['seconds']} s")
    for line in surprises(results["rows"]):
        print(f"{PROG}: {line}", file=sys.stderr)
    return 1 if surprises(results["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
