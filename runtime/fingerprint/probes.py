"""The verifier's probe images, and running models on them: the plumbing that marking, calibration and
verification share.

The probes are held-out crops, degraded with the task's public degradation (fixed seed; never part of the
attacker's queries in this project's threat model). A suspect is a black box: an ONNX file (queried through ONNX
Runtime, one thread) or any callable mapping a float32 NCHW batch to its outputs (as_suspect). ProbeModel is the
clean model with the mark's matrix as an input, so any basis mark can be run without rebuilding the model.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from asvp.errors import AsvpError
from asvp.fingerprint import sym_basis
from asvp.graph_passes.mark import MIX_INPUT, probe_model
from asvp.graph_passes.metadata import read_export
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.engines.sessions import SessionFromOnnx
from asvp.runtime.evaluation.served import THREADS
from asvp.tasks import TASKS, get_task
from asvp.tasks.data import heldout_crops

PROBE_SIZE = 128  # side of the clean held-out crop a probe is made from
PROBES_PER_IMAGE = 3  # x 3 held-out images = 9 probes
PROBE_SEED = 4321
CHUNK = 4


def task_of(model) -> str | None:
    """The task the model's metadata records (asvp.task), if it is a known one."""
    t = read_export(model).task
    return t if t in TASKS else None


def probe_inputs(task: str | None, size: int = PROBE_SIZE, per_image: int = PROBES_PER_IMAGE) -> np.ndarray:
    """The verifier's probe images: held-out crops, degraded with the task's degradation (fixed seed); for an
    unknown task, the clean crops themselves."""
    clean = heldout_crops(size, per_image)
    if task is None:
        return clean.numpy().astype(np.float32)
    spec = get_task(task)
    mult = spec.scale * spec.size_multiple
    if size % mult:
        raise AsvpError(f"probe size {size} must be a multiple of {mult} for task {task}")
    inputs, _ = spec.make_pair(clean, torch.Generator().manual_seed(PROBE_SEED))
    return inputs.numpy().astype(np.float32)


def open_session(model, threads: int = THREADS):
    """An ONNX Runtime session over `model` (`threads` intra-op threads, one inter-op)."""
    return SessionFromOnnx(model, threads=threads, inter_op_threads=1)()


def run_chunks(session, x: np.ndarray, feeds: dict | None = None, outputs: list | None = None) -> list[np.ndarray]:
    """`outputs` of `session` on x, CHUNK images at a time (the image input fed x, plus `feeds`), concatenated."""
    in_name = [i.name for i in session.get_inputs() if i.name != MIX_INPUT][0]
    res = []
    for i in range(0, len(x), CHUNK):
        res.append(session.run(outputs, {in_name: np.ascontiguousarray(x[i : i + CHUNK]), **(feeds or {})}))
    return [np.concatenate([r[j] for r in res]) for j in range(len(res[0]))]


def as_suspect(suspect):
    """(callable batch -> outputs, label) for an ONNX path or a callable: how every model under test is run."""
    if callable(suspect):
        return suspect, getattr(suspect, "__name__", type(suspect).__name__)
    if isinstance(suspect, (str, os.PathLike)):
        model = load_model(suspect)
        image_io(model)
        sess = open_session(model)
        out_name = sess.get_outputs()[0].name
        return (lambda x: run_chunks(sess, x, outputs=[out_name])[0]), str(suspect)
    raise AsvpError(f"the suspect must be an ONNX file or a callable, got {type(suspect).__name__}")


def query_outputs(fn, x: np.ndarray, what: str, expect_shape: tuple) -> np.ndarray:
    """A model's float32 outputs on the probe images x, in chunks; one-line AsvpError when it fails, returns another
    shape than the clean model's (`expect_shape`) or non-finite values. `what` names the model in the error."""
    try:
        out = np.concatenate([np.asarray(fn(np.ascontiguousarray(x[i : i + CHUNK])), np.float32)
                              for i in range(0, len(x), CHUNK)])
    except AsvpError:
        raise
    except Exception as exc:
        raise AsvpError(f"{what} failed on the probe images: {type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from None
    if out.shape != expect_shape:
        raise AsvpError(f"{what} returns shape {list(out.shape)} on the probes; the clean model returns "
                        f"{list(expect_shape)} (not the same task or scale)")
    if not np.all(np.isfinite(out)):
        raise AsvpError(f"{what} returns non-finite values on the probe images")
    return out


class ProbeModel:
    """The clean model with the mark's matrix as an input: T(x) and the basis responses delta_j on probes."""

    def __init__(self, clean_path, tensor: str, channels: int):
        self.path = str(clean_path)
        self.channels = channels
        self.tensor = tensor
        self.session = open_session(probe_model(load_model(clean_path), tensor, channels))
        self.out_name = self.session.get_outputs()[0].name

    def run(self, x: np.ndarray, mix: np.ndarray | None = None) -> np.ndarray:
        c = self.channels
        m = np.zeros((c, c), np.float32) if mix is None else np.asarray(mix, np.float32)
        return run_chunks(self.session, x, {MIX_INPUT: m.reshape(c, c, 1, 1)}, [self.out_name])[0]

    def basis_changes(self, x: np.ndarray, base: np.ndarray, w: np.ndarray, scale: float) -> np.ndarray:
        """[D, ...]: the output change on x of each symmetric-basis mark W B_j W^T at `scale` (base = self.run(x);
        key-free)."""
        return np.stack([self.run(x, scale * (w @ b @ w.T)) - base for b in sym_basis(w.shape[1])])


def projections(outputs: np.ndarray, base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """t_j = <S(x) - T(x), delta_j(x)> over all probe pixels (float64)."""
    r = (np.asarray(outputs, np.float64) - base).reshape(-1)
    return delta.reshape(len(delta), -1).astype(np.float64) @ r


def gram_matrix(delta: np.ndarray) -> np.ndarray:
    """The Gram matrix of the basis responses delta [D', ...] (float64): what the least-squares coefficients use."""
    d = delta.reshape(len(delta), -1).astype(np.float64)
    return d @ d.T
