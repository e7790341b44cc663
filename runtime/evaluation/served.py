"""The served model as a black box, and the queries sent to it: plumbing shared by the attacker (runtime.attacks)
and the owner's fingerprint (runtime.fingerprint), which is why it lives below both.

    with torch_threads(THREADS):
        queries = make_queries("sr", count=96, crop=64, seed=0)      # degraded crops of the TRAINING images
        answers, feats = get_answers(ServedModel("sr.onnx"), queries, cache_dir=None, tag="clean")

ServedModel is an ONNX Runtime session (runtime.engines.sessions) that returns the graph output for a batch, and
optionally feature maps it exposes (graph_passes.expose). Answers are cached on disk by the model file's digest,
the queries and the outputs read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from asvp.errors import AsvpError
from asvp.graph_passes.expose import expose_tensors
from asvp.io import atomic_output
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.engines.sessions import SessionFromOnnx
from asvp.runtime.serving.client import RemoteOptions, ServedFunction
from asvp.tasks import get_task
from asvp.tasks.data import TRAIN_IMAGES, random_crops

# One thread for torch and ONNX Runtime: these models are tiny, and on 2 shared cores two threads per process
# measured 10-30x slower per training step than one (oversubscription), never faster.
THREADS = 1


@contextlib.contextmanager
def torch_threads(threads: int = THREADS):
    """Run the block with torch on `threads` intra-op threads, and restore the previous count afterwards (also on
    error). Entry points (run_attack, the ladder, the sweep, the fingerprint's student training) scope their work
    with it; nothing sets the count process-wide."""
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise AsvpError(f"threads must be an integer >= 1, got {threads!r}")
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(prev)


def file_digest(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the file's SHA-256: what caches key a model file by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class ServedModel:
    """A black box over a served model: an ONNX Runtime session (runtime.engines.sessions, `threads` intra-op
    threads, one inter-op); `query` returns (output, [features]) for a batch. `expose` adds tensors as graph
    outputs first; `read` names the extra outputs `query` returns."""

    def __init__(self, path: str | os.PathLike, expose: list[str] | None = None, read: list[str] | None = None,
                 threads: int = THREADS):
        self.path = str(path)
        model = load_model(path)
        self.input_name, self.output_name = image_io(model)
        self.read = list(read or [])
        if expose:
            model = expose_tensors(model, list(expose))
        self.session = SessionFromOnnx(model, threads=threads, inter_op_threads=1)()
        names = [o.name for o in self.session.get_outputs()]
        missing = [n for n in self.read if n not in names]
        if missing:
            raise AsvpError(f"{path}: outputs {missing} not found (model outputs: {names})")

    def query(self, batch: np.ndarray, chunk: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
        outs, feats = [], [[] for _ in self.read]
        names = [self.output_name] + self.read
        for i in range(0, len(batch), chunk):
            res = self.session.run(names, {self.input_name: np.ascontiguousarray(batch[i : i + chunk], np.float32)})
            outs.append(res[0])
            for j, r in enumerate(res[1:]):
                feats[j].append(r)
        return np.concatenate(outs), [np.concatenate(f) for f in feats]

    def close(self) -> None:
        """Nothing to release (the session goes with the object); RemoteServedModel closes its connection."""


class RemoteServedModel:
    """The same black box behind a KServe v2 endpoint (runtime.serving.client.ServedFunction): `query` sends the
    batch over the network and returns (output, [features]), where the features can only be outputs the server
    declares (tap outputs). An internal tensor is not part of a served API, so nothing can be exposed."""

    def __init__(self, remote: RemoteOptions, output_name: str, read: list[str] | None = None):
        self.fn = ServedFunction(remote)
        self.path = self.fn.__name__
        self.output_name, self.read = output_name, list(read or [])
        served = self.fn.served_outputs()
        missing = [n for n in [output_name, *self.read] if n not in served]
        if missing:
            self.close()
            raise AsvpError(f"{self.path} does not serve {missing} (its outputs: {served})")

    def query(self, batch: np.ndarray, chunk: int = 16) -> tuple[np.ndarray, list[np.ndarray]]:
        out, *feats = self.fn.outputs(np.asarray(batch, np.float32), [self.output_name, *self.read], chunk)
        return out, feats

    def close(self) -> None:
        self.fn.close()


def make_queries(task: str, count: int, crop: int, seed: int) -> np.ndarray:
    """Queries: degraded random crops of the TRAINING images (never the held-out ones).

    The clean crops are used only to synthesise the degraded queries and are then discarded.
    """
    spec = get_task(task)
    mult = spec.scale * spec.size_multiple
    crop -= crop % mult
    g = torch.Generator().manual_seed(seed)
    inputs, _discarded_clean = spec.make_pair(random_crops(TRAIN_IMAGES, count, crop, g), g)
    return inputs.numpy().astype(np.float32)


def answers_key(model: ServedModel, queries: np.ndarray) -> str:
    """The cache key of a model file's answers: its digest, the queries, and the outputs read."""
    h = hashlib.sha256()
    h.update(file_digest(model.path).encode())
    h.update(queries.tobytes())
    h.update(json.dumps(model.read).encode())
    h.update(str(model.session.get_outputs()[0].name).encode())
    return h.hexdigest()[:16]


def get_answers(model: ServedModel, queries: np.ndarray, cache_dir: Path | None, tag: str,
                progress: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Query the served model (or reload the cached answers: key = model file digest + queries + outputs read).

    Features are kept as float16 (the attacker's storage; relative error ~1e-3).
    """
    path = cache_dir / f"answers-{tag}-{answers_key(model, queries)}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path) as z:
            return z["output"], [z[f"f{i}"] for i in range(len(model.read))]
    outs, feats = [], [[] for _ in model.read]
    chunk = 16
    for i in tqdm(range(0, len(queries), chunk), desc=f"query {tag}", disable=not progress, leave=False):
        o, fs = model.query(queries[i : i + chunk], chunk)
        outs.append(o)
        for j, f in enumerate(fs):
            feats[j].append(f.astype(np.float16))
    out, feats = np.concatenate(outs), [np.concatenate(f) for f in feats]
    if path is not None:
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, output=out, **{f"f{i}": f for i, f in enumerate(feats)})
    return out, feats
