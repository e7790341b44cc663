"""Compare a served model (any KServe v2 endpoint) with its ONNX file run in-process, output by output.

    rep = compare_served("sr.asvp.onnx", RemoteOptions("127.0.0.1:8000", "sr"), ServedCheckOptions())

Both run the same seeded inputs (uniform in [0, 1], at each of `shapes`, H and W rounded up to the model's size
multiple, the model's static dims kept). Every output the ONNX model declares
must be served (tap outputs included) with the same shape, and differ by at most `max_abs_diff` (default 0: the
python form runs the same ONNX Runtime session as asvp, so tap placement must be bit-identical; give a tolerance
for another runtime, e.g. Triton's onnxruntime backend on a GPU). The served config's defence digest, when it
records one, must match the model's.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from asvp.errors import AsvpError
from asvp.graph_passes.metadata import read_defence, read_export
from asvp.onnx_utils import image_input, load_model
from asvp.runtime.engines.shapes import parse_shape
from asvp.runtime.engines.sessions import create_session
from asvp.runtime.serving.client import RemoteOptions, TritonRunner
from asvp.runtime.serving.constants import DEFAULT_CHECK_SHAPES



@dataclass
class ServedCheckOptions:
    shapes: tuple = DEFAULT_CHECK_SHAPES  # NxCxHxW strings (C is taken from the model when it is static)
    max_abs_diff: float = 0.0
    seed: int = 0


@dataclass
class ServedReport:
    url: str
    model: str
    onnx: str
    shapes: list
    outputs: list  # [{name, shape, max_abs_diff, identical}]
    taps: list
    digest_model: str | None = None
    digest_served: str | None = None
    max_abs_diff: float = 0.0
    problems: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**self.__dict__, "passed": self.passed}

    def summary_lines(self) -> list[str]:
        lines = [f"served {self.model} at {self.url} vs {self.onnx} on {len(self.shapes)} input shape(s) "
                 f"({', '.join(self.shapes)}):"]
        for o in self.outputs:
            tap = " (tap)" if o["name"] in self.taps else ""
            lines.append(f"  {o['name']}{tap}: max |served - in-process| {o['max_abs_diff']:.3g}"
                         + (" (bit-identical)" if o["identical"] else ""))
        if self.digest_model:
            lines.append(f"  defence config {self.digest_model}; served config records {self.digest_served or 'none'}")
        lines += [f"  problem: {p}" for p in self.problems]
        lines.append(f"verdict: {'PASS' if self.passed else 'FAIL'} (tolerance {self.max_abs_diff:g})")
        return lines


def _inputs(model, shapes, seed: int) -> list[dict]:
    vi = image_input(model)
    name, dims = vi.name, vi.type.tensor_type.shape.dim
    multiple = read_export(model).size_multiple
    rng = np.random.default_rng(seed)
    feeds = []
    for s in shapes:
        shape = list(parse_shape(s, "input shape"))
        if len(shape) != len(dims):
            raise AsvpError(f"input shape {s} has rank {len(shape)}; the model's input {name!r} has rank {len(dims)}")
        shape[2:] = [-(-d // multiple) * multiple for d in shape[2:]]  # the model's size multiple (H, W)
        shape = [d.dim_value if d.dim_value > 0 else s for d, s in zip(dims, shape)]  # its static dims win
        feeds.append({name: rng.random(shape, dtype=np.float32)})
    return feeds


def compare_served(onnx_path, remote: RemoteOptions, opts: ServedCheckOptions) -> ServedReport:
    """Run the ONNX model in-process and the served model on the same inputs; report every output's difference."""
    model = load_model(onnx_path)
    info = read_defence(model)
    feeds = _inputs(model, opts.shapes, opts.seed)
    sess = create_session(str(onnx_path))
    names = [o.name for o in sess.get_outputs()]
    worst = {n: 0.0 for n in names}
    shapes_seen: dict = {}
    problems = []
    with TritonRunner(remote) as runner:
        served_names = runner.output_names()
        missing = [n for n in names if n not in served_names]
        if missing:
            problems.append(f"the served model lacks output(s) {', '.join(missing)}")
        params = runner.config().get("parameters", {})
        for feed in feeds:
            ref = dict(zip(names, sess.run(names, feed)))
            got = runner.infer(feed)
            for n in names:
                if n not in got:
                    continue
                if got[n].shape != ref[n].shape:
                    problems.append(f"output {n}: served shape {list(got[n].shape)}, in-process {list(ref[n].shape)}")
                    worst[n] = float("inf")
                    continue
                shapes_seen[n] = list(ref[n].shape)
                diff = float(np.max(np.abs(got[n].astype(np.float64) - ref[n]))) if ref[n].size else 0.0
                worst[n] = max(worst[n], diff)
    outputs = [{"name": n, "shape": shapes_seen.get(n), "max_abs_diff": worst[n], "identical": worst[n] == 0.0}
               for n in names if n in served_names]
    problems += [f"output {o['name']} differs by {o['max_abs_diff']:.3g} > {opts.max_abs_diff:g}"
                 for o in outputs if o["max_abs_diff"] > opts.max_abs_diff and np.isfinite(o["max_abs_diff"])]
    digest_served = (params.get("asvp.config_digest") or {}).get("string_value")
    digest_model = info.config_digest if info.defended else None
    recorded = "asvp.defended" in params  # written by asvp triton-repo: then the record must match the model
    if recorded and digest_model != digest_served:
        problems.append(f"the served config records defence {digest_served or 'none'}, the model has "
                        f"{digest_model or 'none'}")
    return ServedReport(remote.url, remote.model, str(onnx_path), list(opts.shapes), outputs,
                        [n.tap_output for n in info.taps], digest_model, digest_served, opts.max_abs_diff, problems)
