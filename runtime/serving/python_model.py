"""The python backend's model: Triton copies this file as `<model>/1/model.py` and runs it in its stub process.

It loads `<model>/1/model.onnx` through asvp's ONNX Runtime session (runtime.engines.sessions.SessionFromOnnx,
which registers the AsvpPerturb custom op when the model has plugin nodes): the only way Triton can run a
plugin-mode model. Requests the dynamic batcher hands over together are concatenated along the batch dim when
their shapes agree and run as one batch; each request gets its own response (its own error too). Inputs larger
than the `asvp.max_side` parameter are refused with INVALID_ARG (a 4xx), before any work.

Runs in the serving environment (numpy < 2, asvp installed); imports nothing from Triton at module level so that
the file can be read and tested outside the server.
"""
import json
from pathlib import Path

import numpy as np

MODEL_FILE = "model.onnx"
PARAM_THREADS = "asvp.threads"
PARAM_MAX_SIDE = "asvp.max_side"


def group_by_shape(arrays: list) -> dict:
    """Request indices grouped by the shape of their inputs past the batch dim (the ones that can share a run)."""
    groups: dict = {}
    for i, feed in enumerate(arrays):
        key = tuple((name, a.shape[1:], str(a.dtype)) for name, a in sorted(feed.items()))
        groups.setdefault(key, []).append(i)
    return groups


def run_batched(run, feeds: list, batched: bool) -> list:
    """Run `run(feed) -> {name: array}` once over the concatenated `feeds`; split the outputs back per feed."""
    if not batched or len(feeds) == 1:
        return [run(f) for f in feeds]
    counts = [next(iter(f.values())).shape[0] for f in feeds]
    merged = {name: np.concatenate([f[name] for f in feeds], axis=0) for name in feeds[0]}
    out = run(merged)
    cuts = np.cumsum(counts)[:-1]
    split = {name: np.split(a, cuts, axis=0) for name, a in out.items()}
    return [{name: parts[i] for name, parts in split.items()} for i in range(len(feeds))]


def check_sides(feed: dict, max_side: int) -> str | None:
    """A refusal message when an image input is larger than max_side (0: no limit) or has an empty dim."""
    for name, a in feed.items():
        if a.ndim and 0 in a.shape:
            return f"input {name!r} has an empty dimension: shape {list(a.shape)}"
        if max_side and a.ndim >= 2 and max(a.shape[-2:]) > max_side:
            return f"input {name!r} of shape {list(a.shape)} is larger than this model's limit {max_side} per side"
    return None


class TritonPythonModel:
    """Triton's python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args):
        from asvp.runtime.engines.sessions import SessionFromOnnx

        cfg = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / MODEL_FILE
        threads = int(params.get(PARAM_THREADS) or 0) or None
        self.session = SessionFromOnnx(str(path), threads=threads)()
        self.inputs = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]
        self.batched = int(cfg.get("max_batch_size", 0)) > 0
        self.max_side = int(params.get(PARAM_MAX_SIDE) or 0)

    def run(self, feed: dict) -> dict:
        return dict(zip(self.outputs, self.session.run(self.outputs, feed)))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        def error(msg):
            code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
            err = pb_utils.TritonError(msg, code) if code is not None else pb_utils.TritonError(msg)
            return pb_utils.InferenceResponse(output_tensors=[], error=err)

        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        responses = [None] * len(requests)
        for idx in group_by_shape(feeds).values():
            bad = [i for i in idx if check_sides(feeds[i], self.max_side)]
            for i in bad:
                responses[i] = error(check_sides(feeds[i], self.max_side))
            good = [i for i in idx if i not in bad]
            if not good:
                continue
            try:
                outs = run_batched(self.run, [feeds[i] for i in good], self.batched)
            except Exception as exc:  # one line back to the client; the server keeps serving
                msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                for i in good:
                    responses[i] = error(f"the model failed on this input: {msg}")
                continue
            for i, out in zip(good, outs):
                responses[i] = pb_utils.InferenceResponse(
                    [pb_utils.Tensor(n, np.ascontiguousarray(out[n])) for n in self.outputs])
        return responses

    def finalize(self):
        self.session = None
