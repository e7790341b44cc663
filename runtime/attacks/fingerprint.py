"""Distillation fingerprint: mark a served model with a secret key, then test whether a suspect was distilled
from it (`asvp fingerprint mark|verify`). The mark and the exact test are defined in asvp.fingerprint.

    mark_file(clean.onnx, marked.onnx, key)             # calibrate W and eps on probe images, insert, write
    verify(suspect, clean.onnx, marked.onnx, key)       # -> FingerprintResult: c, p-value, verdict

The suspect is a black box: an ONNX file (queried through ONNX Runtime, one thread) or any callable mapping a
float32 NCHW batch to its outputs. It is queried only on the probe images (held-out crops, degraded with the
task's public degradation; never part of the attacker's queries in this project's threat model).

Strength (mark_file). By default the mark is as strong as the teacher's budget allows (--max-drop, 0.05 dB): on
the owner's calibration data (ground-truth pairs from crops of the TRAINING images, fixed seed; never the held-out
images on which the cost is reported) the key space drops the directions along which the mark would change the
teacher's error to first order (asvp.fingerprint.cost_neutral_directions), and eps is the largest for which the
teacher's pooled PSNR on that data drops by at most CAL_MARGIN (40 %) of the budget, measured on the marked model
itself; the rest of the budget is the margin for other images.

Calibration of the test. The null distribution is exact by construction (the key is uniform on the sphere and
independent of any model that never saw the marked outputs): p = P(c' >= c) for c' one coordinate of a uniform
unit vector in R^D'. No reference models are needed for validity; they add power: the span of the reference
students' coefficient vectors (their systematic bias, key-free) is removed before the test. The evaluation
(benchmarks/fingerprint_eval.py) checks the null on students of the clean teacher, models trained on ground
truth, other architectures and baselines. What is cached is the expensive, key-independent part: the clean
model's D' basis responses on the probes (`cache` directory, keyed by the clean model's digest, the mark's
tensor, basis and eps, and the probe images), so each further suspect costs one pass over the probes.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from asvp.errors import AsvpError
from asvp.fingerprint import (DEFAULT_ALPHA, DEFAULT_M, bias_neutral_directions, check_key, coefficients,
                              cost_neutral_directions, key_dim, key_direction, key_id, key_statistic, mix_matrix,
                              principal_directions, response_equalizer, sym_basis)
from asvp.graph_passes.expose import expose_tensors
from asvp.graph_passes.fingerprint import MIX_INPUT, MarkInfo, mark_model, probe_model, read_mark, resolve_feature
from asvp.io import atomic_output
from asvp.metrics import pooled_mse, pooled_psnr, psnr_from_mse, psnr_ssim
from asvp.onnx_utils import META_PREFIX, get_metadata, image_io, load_model, save_model
from asvp.runtime.attacks.attack import THREADS, ServedModel, file_digest, get_answers, make_queries, single_thread
from asvp.runtime.attacks.students import TrainBudget, predict, train_student
from asvp.runtime.engines.sessions import SessionFromOnnx
from asvp.tasks import TASKS, get_task
from asvp.tasks.data import TRAIN_IMAGES, heldout_crops, random_crops

PROBE_SIZE = 128  # side of the clean held-out crop a probe is made from
PROBES_PER_IMAGE = 3  # x 3 held-out images = 9 probes
PROBE_SEED = 4321
DEFAULT_MAX_DROP_DB = 0.05  # the teacher's budget: held-out PSNR it may lose to the mark
CAL_MARGIN = 0.4  # eps is calibrated to this share of the budget on the calibration data (held-out is other images)
CAL_CROPS, CAL_SIZE, CAL_SEED = 48, 96, 2468  # the owner's calibration data (training-image crops)
BASIS_DB = 50.0  # the verifier's basis marks: this PSNR away from the clean output on the probes (key-free scale)
KEY_CHECK_MIN_COS = 0.5  # the defended model's own statistic must reach this with the given key
CHUNK = 4
CALIBRATION_DIRECTION = "asvp-fingerprint-public-calibration-direction"  # public, key-independent
BIAS_SEED0 = 200  # mark-time bias students: seeds 200, 201, ... (the verifier's reference students are 100, ...)
BIAS_BUDGET = (96, 300)  # their queries and steps: the quick attack budget, as the reference students


def task_of(model) -> str | None:
    t = get_metadata(model).get(META_PREFIX + "task")
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


def _session(model):
    return SessionFromOnnx(model, threads=THREADS, inter_op_threads=1)()


def _run(session, x: np.ndarray, feeds: dict | None = None, outputs: list | None = None) -> list[np.ndarray]:
    in_name = [i.name for i in session.get_inputs() if i.name != MIX_INPUT][0]
    res = []
    for i in range(0, len(x), CHUNK):
        res.append(session.run(outputs, {in_name: np.ascontiguousarray(x[i : i + CHUNK]), **(feeds or {})}))
    return [np.concatenate([r[j] for r in res]) for j in range(len(res[0]))]


def _as_suspect(suspect):
    """A callable batch -> outputs for an ONNX path or a callable."""
    if callable(suspect):
        return suspect, getattr(suspect, "__name__", type(suspect).__name__)
    if isinstance(suspect, (str, os.PathLike)):
        model = load_model(suspect)
        image_io(model)
        sess = _session(model)
        out_name = sess.get_outputs()[0].name
        return (lambda x: _run(sess, x, outputs=[out_name])[0]), str(suspect)
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
        self.session = _session(probe_model(load_model(clean_path), tensor, channels))
        self.out_name = self.session.get_outputs()[0].name

    def run(self, x: np.ndarray, mix: np.ndarray | None = None) -> np.ndarray:
        c = self.channels
        m = np.zeros((c, c), np.float32) if mix is None else np.asarray(mix, np.float32)
        return _run(self.session, x, {MIX_INPUT: m.reshape(c, c, 1, 1)}, [self.out_name])[0]

    def basis_changes(self, x: np.ndarray, base: np.ndarray, w: np.ndarray, scale: float) -> np.ndarray:
        """[D, ...]: the output change on x of each symmetric-basis mark W B_j W^T at `scale` (base = self.run(x);
        key-free)."""
        return np.stack([self.run(x, scale * (w @ b @ w.T)) - base for b in sym_basis(w.shape[1])])


# ---- marking -------------------------------------------------------------------------------------------------

@dataclass
class MarkResult:
    path: str
    mark: dict  # MarkInfo.public()
    key_id: str
    key_dim: int
    probes: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        m = self.mark
        return [f"wrote {self.path}: keyed fingerprint at {m['node']} (C={m['channels']}, m={m['m']}, "
                f"{self.key_dim} key dimensions), eps {m['eps']:.4g}, marked vs clean output {m['strength_db']:.1f} dB "
                f"PSNR on {self.probes} probe(s); key id {self.key_id} (the key is not stored in the model)"] + (
            [f"strength from the teacher's budget {m['cost']['max_drop_db']:g} dB: drop "
             f"{m['cost']['calibration_drop_db']:.4f} dB on {m['cost']['calibration_images']} (target "
             f"{m['cost']['target_db']:g}; {m['cost']['removed_directions']} cost-bearing key directions removed); "
             "measure the held-out cost with `asvp validate`"] if m.get("cost") else []) + (
            [f"key space kept away from the deviations of {m['bias']['students']} quick students of the model "
             f"(seeds {m['bias']['seeds'][0]}-{m['bias']['seeds'][1]}): {m['bias']['removed_directions']} key "
             "directions removed; verify removes no reference span"] if m.get("bias") else [])


def calibration_pairs(task: str, count: int | None = None, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The owner's calibration data for the mark's cost: `count` (default CAL_CROPS) (degraded input, ground truth)
    crops of side `size` (default CAL_SIZE) of the TRAINING images (fixed seed). Never the held-out images, on
    which the teacher's cost is measured."""
    count, size = count or CAL_CROPS, size or CAL_SIZE
    spec = get_task(task)
    mult = spec.scale * spec.size_multiple
    size -= size % mult
    g = torch.Generator().manual_seed(CAL_SEED)
    x, y = spec.make_pair(random_crops(TRAIN_IMAGES, count, size, g), g)
    return x.numpy().astype(np.float32), y.numpy().astype(np.float32)


def _pooled_psnr(out: np.ndarray, target: np.ndarray) -> float:
    """PSNR of the mean squared error over all calibration crops (outputs clipped to [0, 1], as deployed). Pooled,
    not the mean of per-crop PSNRs: a nearly flat crop (a teacher error near zero) would otherwise dominate the
    drop and make the mark needlessly weak."""
    return psnr_from_mse(max(pooled_mse(out, target, clip=True), 1e-12))  # target: ground truth, already in [0, 1]


def _largest_scale_within(drop, target: float, s0: float) -> float:
    """The largest s > 0 with drop(s) <= target (drop(0) = 0, drop grows ~quadratically for large s)."""
    hi = s0
    while drop(hi) <= target and hi < 1e6 * s0:
        hi *= 2
    lo = 0.0
    # the last crossing from below: scan down from hi on a grid, then bisect
    grid = np.linspace(0, hi, 65)[1:]
    ok = [g for g in grid if drop(g) <= target]
    lo = max(ok) if ok else 0.0
    hi = min([g for g in grid if g > lo], default=hi)
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if drop(mid) <= target else (lo, mid)
    return lo


@dataclass
class KeySpace:
    """Everything about a mark that does not depend on the key: the feature, its principal directions W, the
    verifier's basis scale, the public key space R (equalised on the probes and, with cost calibration,
    restricted to the cost-neutral directions) and the owner's calibration data with the key directions'
    responses on it. mark_file draws the key's scale from it; benchmarks/fingerprint_key_strength.py studies how
    that scale varies over keys (cost_terms)."""
    feat: object  # graph_passes.candidates.FeatureNode
    probe: ProbeModel
    x: np.ndarray  # the probe images
    base: np.ndarray  # the clean outputs on them
    w: np.ndarray  # [C, m]
    basis_eps: float = 0.0
    r: np.ndarray | None = None  # [D, D'] the public key space
    xc: np.ndarray | None = None  # calibration inputs, ground truth, the clean outputs on them
    yc: np.ndarray | None = None
    bc: np.ndarray | None = None
    dq: np.ndarray | None = None  # [D', N, ...] the key directions' output changes on xc at basis_eps
    removed: int = 0  # cost-bearing directions removed
    bias: dict | None = None  # with bias students: who they were and how many directions their deviations removed

    def scale_for(self, coeffs, target_db: float) -> float:
        """eps at which the mark with symmetric-basis coefficients `coeffs` moves the output `target_db` PSNR away
        from the clean one on the probes."""
        e = 0.05
        for _ in range(3):  # the output change is ~linear in eps: two corrections reach the target closely
            got = pooled_psnr(self.probe.run(self.x, mix_matrix(self.w, coeffs, e)), self.base)
            if not math.isfinite(got):
                raise AsvpError(f"the mark at {self.feat.name} does not change the output; choose another --node")
            e *= 10 ** ((got - target_db) / 20)
        return e

    def key_mark(self, u: np.ndarray) -> np.ndarray:
        """The output change of key vector u (in R^D') on the calibration data, at eps = basis_eps."""
        return np.tensordot(u, self.dq, axes=1)

    def cost_terms(self) -> dict:
        """The quadratic model of the calibration cost, key-free: for key u at scale s (eps = s x basis_eps) the
        pooled squared error is mse0 + (2 s g.u + s^2 u^T H u) / n, outputs unclipped."""
        flat = self.dq.reshape(len(self.dq), -1)
        err = (self.bc.astype(np.float64) - self.yc).reshape(-1)
        return {"g": flat @ err, "H": flat @ flat.T, "mse0": pooled_mse(self.bc, self.yc, clip=True),
                "n": int(err.size)}


def key_space(model_path, *, task: str | None, node: str | None = None, m: int = DEFAULT_M, cost: bool = True,
              model=None, bias_students: int = 0, bias_budget: tuple[int, int] = BIAS_BUDGET,
              progress: bool = False) -> KeySpace:
    """The key-free part of marking `model_path` (see KeySpace; `model`: the file, if already loaded); `cost`
    adds the calibration data and restricts the key space to the cost-neutral directions; `bias_students` > 0
    trains that many students of `model_path` (seeds BIAS_SEED0.., `bias_budget` = (queries, steps)) and keeps the
    half of the key directions along which they deviate least from it (bias_neutral_directions)."""
    if not isinstance(bias_students, int) or bias_students < 0:
        raise AsvpError(f"bias students must be an integer >= 0, got {bias_students!r}")
    if bias_students and task is None:
        raise AsvpError("bias students need the task (--task) for their queries")
    if model is None:
        model = load_model(model_path)
        image_io(model)
    feat = resolve_feature(model, node, m)
    x = probe_inputs(task)
    f = _run(_session(expose_tensors(model, [feat.output])), x, outputs=[feat.output])[0]
    w = principal_directions(f, m)
    probe = ProbeModel(model_path, feat.output, feat.channels)
    ks = KeySpace(feat, probe, x, probe.run(x), w)
    # The basis scale is calibrated on a fixed public direction; the verifier recomputes the responses from it,
    # so nothing it uses depends on the key (the null stays exact).
    basis_eps = ks.basis_eps = ks.scale_for(key_direction(CALIBRATION_DIRECTION, key_dim(m)), BASIS_DB)
    raw_probes = probe.basis_changes(x, ks.base, w, basis_eps)
    r = ks.r = response_equalizer(_gram(raw_probes))
    if cost:
        xc, yc = calibration_pairs(task)
        bc = probe.run(xc)
        raw = probe.basis_changes(xc, bc, w, basis_eps)
        dc = np.tensordot(r.T, raw.astype(np.float64), axes=1)  # [D', N, ...] equalised responses
        err = bc.astype(np.float64) - yc
        cross = np.einsum("jnp,np->nj", dc.reshape(len(dc), len(xc), -1), err.reshape(len(xc), -1))
        q = cost_neutral_directions(cross)
        ks.r, ks.xc, ks.yc, ks.bc = r @ q, xc, yc, bc
        ks.dq, ks.removed = np.tensordot(q.T, dc, axes=1), int(q.shape[0] - q.shape[1])
    if bias_students:
        # the students' deviations as the verifier will see them: projections on the probes, least-squares
        # coefficients in the key space so far
        delta = np.tensordot(ks.r.T, raw_probes.astype(np.float64), axes=1).astype(np.float32)
        gram = _gram(delta)
        seeds = tuple(range(BIAS_SEED0, BIAS_SEED0 + bias_students))
        pool, steps = bias_budget
        students = train_reference_students(model_path, task, seeds, steps, pool, progress=progress)
        a = [coefficients(projections(query_outputs(fn, x, f"bias student {n}", ks.base.shape), ks.base, delta), gram)
             for n, fn in students.items()]
        q = bias_neutral_directions(np.stack(a))
        ks.r = ks.r @ q
        if ks.dq is not None:
            ks.dq = np.tensordot(q.T, ks.dq, axes=1)
        ks.bias = {"students": bias_students, "seeds": [seeds[0], seeds[-1]], "queries": pool, "steps": steps,
                   "removed_directions": int(q.shape[0] - q.shape[1])}
    return ks


def check_max_drop(max_drop_db) -> float:
    """The teacher's budget in dB, if it is one `mark_file` accepts: (0, 1]."""
    if not (isinstance(max_drop_db, (int, float)) and math.isfinite(max_drop_db) and 0 < max_drop_db <= 1):
        raise AsvpError(f"max drop must be in (0, 1] dB, got {max_drop_db!r}")
    return float(max_drop_db)


def mark_file(model_path, out_path, key: str, *, node: str | None = None, m: int = DEFAULT_M,
              strength_db: float | None = None, max_drop_db: float = DEFAULT_MAX_DROP_DB,
              task: str | None = None, bias_students: int = 0, space: KeySpace | None = None,
              progress: bool = False) -> MarkResult:
    """Mark a (clean or ASVP-defended) model with `key`, written atomically.

    W from the probe features. Strength: by default (strength_db None) derived from the teacher's budget: the key
    space excludes the directions that change the teacher's error to first order on the owner's calibration data
    (cost_neutral_directions), and eps is the largest for which the teacher's pooled PSNR on that data drops by at most
    CAL_MARGIN x `max_drop_db` (measured on the marked model itself). With `strength_db`, eps instead makes the
    marked output `strength_db` PSNR away from the unmarked one on the probes (no cost calibration).
    bias_students > 0: the key space also avoids the directions along which that many quick students of the model
    deviate from it (key_space); `space`: a KeySpace key_space already made for this model with these settings
    (benchmarks reuse one across keys)."""
    t0 = time.perf_counter()
    check_key(key)
    if strength_db is not None and not (isinstance(strength_db, (int, float)) and math.isfinite(strength_db)
                                        and 20 <= strength_db <= 90):
        raise AsvpError(f"strength must be a PSNR in [20, 90] dB, got {strength_db!r}")
    check_max_drop(max_drop_db)
    if not isinstance(m, int) or m < 1:
        raise AsvpError(f"m must be an integer >= 1, got {m!r}")
    model = load_model(model_path)
    image_io(model)
    task = task or task_of(model)
    if strength_db is None and task is None:
        raise AsvpError("calibrating the mark's cost needs the task (--task) for its calibration data, or give a "
                        "fixed --strength")
    ks = space or key_space(model_path, task=task, node=node, m=m, cost=strength_db is None, model=model,
                            bias_students=bias_students, progress=progress)
    r, w, probe, x, basis_eps = ks.r, ks.w, ks.probe, ks.x, ks.basis_eps
    u = key_direction(key, r.shape[1])  # eps, the served mark's scale, is calibrated on the key's own R u
    cost = None
    if strength_db is None:
        xc, yc, bc = ks.xc, ks.yc, ks.bc
        du = ks.key_mark(u)  # the key's mark on the calibration data at eps = basis_eps
        p0 = _pooled_psnr(bc, yc)
        target = CAL_MARGIN * max_drop_db
        lin = lambda s: p0 - _pooled_psnr(bc + s * du, yc)  # noqa: E731
        eps = basis_eps * _largest_scale_within(lin, target, 1.0)
        measure = lambda e: p0 - _pooled_psnr(probe.run(xc, mix_matrix(w, r @ u, e)), yc)  # noqa: E731
        got = measure(eps)
        for _ in range(6):  # measured on the marked model itself (the response is only ~linear in eps)
            if got <= target * 1.02:
                break
            eps *= max(0.5, target / got)  # exact if the drop is linear in eps, conservative if quadratic
            got = measure(eps)
        cost = {"max_drop_db": float(max_drop_db), "target_db": round(target, 4),
                "calibration_drop_db": round(got, 4), "calibration_images": f"{len(xc)} training crops "
                f"{list(xc.shape[1:])}, seed {CAL_SEED}", "removed_directions": ks.removed}
    else:
        eps = ks.scale_for(r @ u, strength_db)
    mix = mix_matrix(w, r @ u, eps)
    strength = pooled_psnr(probe.run(x, mix), ks.base)
    feat = ks.feat
    info = MarkInfo(feat.name, feat.output, int(feat.channels), int(m), float(eps), w.tolist(), round(strength, 2),
                    basis_eps=float(basis_eps), equalizer=r.tolist(), cost=cost, bias=ks.bias)
    save_model(mark_model(model, info, mix), out_path, check=False)
    return MarkResult(str(out_path), info.public(), key_id(key), info.key_dim, len(x),
                      round(time.perf_counter() - t0, 1))


# ---- verification ---------------------------------------------------------------------------------------------

def _probe_key(clean_path, info: MarkInfo, x: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(file_digest(clean_path).encode())
    h.update(info.tensor.encode())
    h.update(np.asarray(info.basis, np.float64).tobytes())
    h.update(repr(float(info.probe_eps)).encode())
    h.update(info.r().tobytes())
    h.update(x.tobytes())
    return h.hexdigest()[:16]


_MEMO: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def basis_responses(clean_path, info: MarkInfo, x: np.ndarray, cache=None) -> tuple[np.ndarray, np.ndarray]:
    """(T(x), delta [D', ...]): the clean outputs and the equalised basis marks' output changes on the probes.

    Key-independent; memoised in this process and, with `cache` (a directory), on disk."""
    key = _probe_key(clean_path, info, x)
    if key in _MEMO:
        return _MEMO[key]
    path = Path(cache) / f"fingerprint-basis-{key}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as z:
            _MEMO[key] = (z["clean"], z["delta"])
            return _MEMO[key]
    probe = ProbeModel(clean_path, info.tensor, info.channels)
    base = probe.run(x)
    raw = probe.basis_changes(x, base, info.w(), info.probe_eps)
    delta = np.tensordot(info.r().T, raw.astype(np.float64), axes=1).astype(np.float32)  # [D', ...]
    if path is not None:
        with atomic_output(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, clean=base, delta=delta)
    _MEMO[key] = (base, delta)
    return base, delta


def projections(outputs: np.ndarray, base: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """t_j = <S(x) - T(x), delta_j(x)> over all probe pixels (float64)."""
    r = (np.asarray(outputs, np.float64) - base).reshape(-1)
    return delta.reshape(len(delta), -1).astype(np.float64) @ r


def _gram(delta: np.ndarray) -> np.ndarray:
    d = delta.reshape(len(delta), -1).astype(np.float64)
    return d @ d.T


# ---- reference models (the systematic bias of models that never saw the marked outputs) -------------------------

def _refs_path(cache, probe_key: str) -> Path | None:
    return Path(cache) / f"fingerprint-references-{probe_key}.npz" if cache else None


def load_references(cache, probe_key: str) -> dict[str, np.ndarray]:
    path = _refs_path(cache, probe_key)
    if path is None or not path.exists():
        return {}
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def save_references(cache, probe_key: str, refs: dict[str, np.ndarray]) -> None:
    path = _refs_path(cache, probe_key)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **refs)


@dataclass
class FingerprintResult:
    suspect: str
    statistic: float  # c = cos(u, a), a the suspect's least-squares mark coefficients (reference bias span removed)
    p_value: float  # exact, under "the suspect is independent of the key"
    alpha: float
    flagged: bool  # p < alpha
    beta: float  # share of the (linearised) mark the suspect reproduces: <S - T, d_u> / <d_u, d_u>
    key_dim: int
    key_id: str
    key_check: float  # the marked model's own statistic c with this key (must be >= KEY_CHECK_MIN_COS)
    references: list  # names of the reference models whose bias span was removed (empty: none)
    probes: dict
    mark: dict
    rel_residual: float  # ||S - T|| / ||d_u||: how far the suspect is from the clean teacher, in mark norms
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def verdict(self) -> str:
        return "flagged" if self.flagged else "not flagged"

    def summary_lines(self) -> list[str]:
        what = ("distilled from the marked model: the suspect reproduces the secret mark" if self.flagged
                else "no evidence of distillation from the marked model")
        bias = self.mark.get("bias")
        refs = (f"key space chosen away from the bias of {bias['students']} students of the clean model" if bias
                else f"bias subspace of {len(self.references)} reference model(s) removed" if self.references
                else "no reference models (exact but less powerful; see `asvp fingerprint calibrate`)")
        return [f"suspect {self.suspect}: {self.verdict.upper()} ({what})",
                f"statistic c = {self.statistic:+.4f} over {self.key_dim} key dimensions, p = {self.p_value:.3g} "
                f"(alpha {self.alpha:g}; exact null: a key independent of the suspect); {refs}",
                f"mark reproduced: beta = {self.beta:+.3f}; suspect-vs-clean distance {self.rel_residual:.1f} mark "
                f"norms; key check on the marked model c = {self.key_check:.3f}; {self.probes['count']} probe(s) "
                f"{self.probes['shape']}; key id {self.key_id}"]


@dataclass
class Verifier:
    """Everything key-independent that a verification needs, computed once: the mark's public description,
    the probes, the clean outputs, the basis responses, their Gram matrix and the reference bias."""

    clean: str
    defended: str
    info: MarkInfo
    x: np.ndarray
    base: np.ndarray
    delta: np.ndarray
    gram: np.ndarray
    probe_key: str
    refs: dict

    @classmethod
    def open(cls, clean, defended, *, cache=None, task: str | None = None, references=None) -> "Verifier":
        dmodel = load_model(defended)
        info = read_mark(dmodel)
        if info is None:
            raise AsvpError(f"{defended} carries no fingerprint mark (metadata asvp.fingerprint); mark it with "
                            "`asvp fingerprint mark`")
        cmodel = load_model(clean)
        image_io(cmodel)
        if info.tensor not in {o for n in cmodel.graph.node for o in n.output}:
            raise AsvpError(f"{clean} has no tensor {info.tensor!r} (where {defended} is marked): not its clean model")
        x = probe_inputs(task or task_of(cmodel) or task_of(dmodel))
        base, delta = basis_responses(clean, info, x, cache)
        pk = _probe_key(clean, info, x)
        v = cls(str(clean), str(defended), info, x, base, delta, _gram(delta), pk, load_references(cache, pk))
        if references:
            for i, ref in enumerate(references):
                fn, label = _as_suspect(ref)
                v.refs[label if label not in v.refs else f"{label}#{i}"] = v.project(fn, f"reference {label}")
        return v

    def query(self, fn, what: str) -> np.ndarray:
        """fn's outputs on the probes, in chunks, checked against the clean model's (shape, finite values)."""
        return query_outputs(fn, self.x, what, self.base.shape)

    def project(self, fn, what: str) -> np.ndarray:
        return projections(self.query(fn, what), self.base, self.delta)

    def span_references(self, exclude: str | None = None) -> list[str]:
        """The reference models whose bias span the test removes, leaving out `exclude`; none when the key space
        was chosen away from such bias when marking (info.bias): removing a span there would cost the mark more
        than the bias it removes."""
        return [] if self.info.bias else [k for k in self.refs if k != exclude]

    def nuisance(self, exclude: str | None = None) -> list:
        """The mark coefficients of span_references (their systematic bias, whose span the test removes)."""
        return [coefficients(self.refs[k], self.gram) for k in self.span_references(exclude)]

    def test(self, t: np.ndarray, u: np.ndarray, exclude: str | None = None) -> tuple[float, float]:
        return key_statistic(coefficients(t, self.gram, self.nuisance(exclude)), u)

    def check_key(self, key: str) -> tuple[np.ndarray, float]:
        """The key's unit vector u in the key space, and the marked model's own statistic c under it; a one-line
        error when c < KEY_CHECK_MIN_COS (a wrong key, or a different clean model)."""
        u = key_direction(key, self.info.key_dim)
        key_check, _ = key_statistic(coefficients(self.project(_as_suspect(self.defended)[0],
                                                               f"defended model {self.defended}"), self.gram), u)
        if key_check < KEY_CHECK_MIN_COS:
            raise AsvpError(f"the key does not reproduce the mark in {self.defended} (c = {key_check:.3f} < "
                            f"{KEY_CHECK_MIN_COS}): wrong key, or a different clean model")
        return u, key_check

    def verify(self, suspect, key: str, *, alpha: float = DEFAULT_ALPHA, name: str | None = None,
               t0: float | None = None) -> FingerprintResult:
        t0 = time.perf_counter() if t0 is None else t0
        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise AsvpError(f"alpha must be in (0, 1), got {alpha!r}")
        u, key_check = self.check_key(key)
        fn, label = _as_suspect(suspect)
        name = name or label
        return self.result(self.query(fn, f"suspect {name}"), name, key, u, key_check, alpha=alpha, t0=t0)

    def result(self, outputs: np.ndarray, name: str, key: str, u: np.ndarray, key_check: float, *,
               alpha: float = DEFAULT_ALPHA, t0: float | None = None) -> FingerprintResult:
        """The verdict on a suspect's outputs on the probes (`query`), for the key already checked by check_key (u,
        key_check): one pass over the probes per suspect, and one key check for many."""
        t0 = time.perf_counter() if t0 is None else t0
        t = projections(outputs, self.base, self.delta)
        c, p = self.test(t, u, exclude=name)
        du = (self.info.eps / self.info.probe_eps) * np.tensordot(u, self.delta.astype(np.float64), axes=1).reshape(-1)
        nd = float(du @ du)
        r = (np.asarray(outputs, np.float64) - self.base).reshape(-1)
        return FingerprintResult(
            name, c, p, float(alpha), bool(p < alpha), float(du @ r / nd) if nd > 0 else math.nan,
            self.info.key_dim, key_id(key), key_check, sorted(self.span_references(name)),
            {"count": int(len(self.x)), "shape": list(self.x.shape[1:]), "seed": PROBE_SEED}, self.info.public(),
            float(np.linalg.norm(r) / math.sqrt(nd)) if nd > 0 else math.nan, round(time.perf_counter() - t0, 1))


def verify(suspect, clean, defended, key: str, *, alpha: float = DEFAULT_ALPHA, cache=None,
           task: str | None = None, references=None, name: str | None = None) -> FingerprintResult:
    """Test whether `suspect` (ONNX path or callable) was distilled from the marked model `defended`.

    references: extra reference models (ONNX paths or callables) that never saw the marked outputs; with `cache`,
    the references stored there by `calibrate` are used too. The span of their bias is removed before the test."""
    t0 = time.perf_counter()
    check_key(key)
    v = Verifier.open(clean, defended, cache=cache, task=task, references=references)
    return v.verify(suspect, key, alpha=alpha, name=name, t0=t0)


# ---- calibration: reference students of the clean teacher -------------------------------------------------------

@dataclass
class CalibrationResult:
    cache: str
    references: list  # [{name, c_loo, p_loo}]: each reference tested against the bias of the others
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        rows = [f"  {r['name']}" + ("" if math.isnan(r["c_loo"]) else
                                     f": leave-one-out c = {r['c_loo']:+.3f}, p = {r['p_loo']:.3g}")
                for r in self.references]
        if self.references and math.isnan(self.references[0]["c_loo"]):
            rows.append("  (with the key, each reference is also tested against the bias of the others)")
        return [f"{len(self.references)} reference model(s) stored in {self.cache} (key-independent; reused by "
                f"`asvp fingerprint verify --cache {self.cache}`)"] + rows


def train_reference_students(clean, task: str, seeds=(100, 101, 102), steps: int = 300, pool: int = 96,
                             crop: int = 64, progress: bool = False) -> dict:
    """Students distilled from the CLEAN teacher (never from the marked one): name -> callable."""
    out = {}
    with single_thread():
        for s in seeds:
            q = make_queries(task, pool, crop, s)
            y, _ = get_answers(ServedModel(clean), q, None, "clean", progress)
            m, _ = train_student(task, q, y, seed=s, budget=TrainBudget(steps=steps, batch=8),
                                 desc=f"reference student s{s}", progress=progress)
            out[f"student-of-clean-s{s}-{steps}x{pool}"] = _student_fn(m)
    return out


def _student_fn(model):
    return lambda x: predict(model, torch.from_numpy(np.ascontiguousarray(x, np.float32)))


def calibrate(clean, defended, *, cache, task: str | None = None, seeds=(100, 101, 102), steps: int = 300,
              pool: int = 96, references=None, test_key: str | None = None, progress: bool = False) -> CalibrationResult:
    """Train reference students of the clean teacher (and query any given `references`), store their
    key-independent projections in `cache` for every later `verify`; report each one's leave-one-out p-value
    (under a test key if given: a calibration check, not a requirement)."""
    t0 = time.perf_counter()
    if not cache:
        raise AsvpError("calibrate needs a cache directory (--cache DIR) to store the reference models in")
    if not isinstance(steps, int) or steps < 1 or not isinstance(pool, int) or pool < 2:
        raise AsvpError(f"steps must be >= 1 and pool >= 2, got steps={steps!r}, pool={pool!r}")
    v = Verifier.open(clean, defended, cache=cache, task=task, references=references)
    task = task or task_of(load_model(clean)) or task_of(load_model(defended))
    if seeds:
        if task is None:
            raise AsvpError("reference students need a task (--task): the clean model records none")
        for name, fn in train_reference_students(clean, task, seeds, steps, pool, progress=progress).items():
            v.refs[name] = v.project(fn, f"reference {name}")
    save_references(cache, v.probe_key, v.refs)
    u = key_direction(test_key, v.info.key_dim) if test_key else None
    rows = []
    for name, t in v.refs.items():
        c, p = v.test(t, u, exclude=name) if u is not None else (math.nan, math.nan)
        rows.append({"name": name, "c_loo": c, "p_loo": p})
    return CalibrationResult(str(cache), rows, round(time.perf_counter() - t0, 1))


# ---- the demo's quick check --------------------------------------------------------------------------------------

def quick_check(clean, served, task: str, workdir, *, key: str, steps: int = 300, pool: int = 96,
                strength_db: float | None = None, ref_seeds=(100, 101, 102), seed: int = 0,
                alpha: float = DEFAULT_ALPHA, progress: bool = False) -> dict:
    """Mark `served` with `key`, distil one student from the marked model and one from the clean model (same
    queries, seed and budget), calibrate on reference students of the clean teacher, and verify both.
    Expected: the first is flagged, the second is not. Returns a dict (report data)."""
    t0 = time.perf_counter()
    workdir = Path(workdir)
    marked = workdir / f"{task}.fp.onnx"
    mres = mark_file(served, marked, key, strength_db=strength_db, task=task)
    spec = get_task(task)
    h_in, h_tgt = spec.heldout()
    with single_thread():
        teach = {n: psnr_ssim(ServedModel(p).query(h_in.numpy(), 2)[0], h_tgt.numpy())[0]
                 for n, p in (("clean", clean), ("marked", marked))}
        q = make_queries(task, pool, 64, seed)
        students = {}
        for name, path in (("student of the marked model", marked), ("student of the clean model", clean)):
            y, _ = get_answers(ServedModel(path), q, None, name, progress)
            mdl, _ = train_student(task, q, y, seed=seed, budget=TrainBudget(steps=steps, batch=8),
                                   desc=name, progress=progress)
            students[name] = _student_fn(mdl)
    v = Verifier.open(clean, marked, cache=None, task=task)
    for name, fn in train_reference_students(clean, task, ref_seeds, steps, pool, progress=progress).items():
        v.refs[name] = v.project(fn, f"reference {name}")
    results = [v.verify(fn, key, alpha=alpha, name=name).to_dict() for name, fn in students.items()]
    ok = results[0]["flagged"] and not results[1]["flagged"]
    return {"task": task, "marked_model": str(marked), "key_id": key_id(key), "mark": mres.mark,
            "teacher_psnr": teach, "teacher_drop_db": teach["clean"] - teach["marked"],
            "budget": {"queries": pool, "steps": steps, "seed": seed, "reference_seeds": list(ref_seeds)},
            "alpha": alpha, "results": results, "passed": bool(ok), "seconds": round(time.perf_counter() - t0, 1)}
