"""The key space of a mark: everything about it that does not depend on the key (KeySpace, key_space).

The feature and its principal directions W come from the probe features; the verifier's basis scale is
calibrated on a fixed public direction; the key space R is equalised on the probes and, with cost calibration,
restricted to the directions that do not change the teacher's error to first order on the owner's calibration
data (ground-truth pairs from crops of the TRAINING images, fixed seed; never the held-out images on which the
cost is reported; asvp.fingerprint.cost_neutral_directions). With bias students, the half of the key directions
along which students of the model deviate least from it is kept (asvp.fingerprint.bias_neutral_directions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from asvp.errors import AsvpError
from asvp.fingerprint import (DEFAULT_M, bias_neutral_directions, coefficients, cost_neutral_directions, key_dim,
                              key_direction, mix_matrix, principal_directions, response_equalizer)
from asvp.graph_passes.expose import expose_tensors
from asvp.graph_passes.mark import resolve_feature
from asvp.metrics import pooled_mse, pooled_psnr, psnr_from_mse
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.fingerprint.probes import (ProbeModel, gram_matrix, open_session, probe_inputs, projections,
                                             query_outputs, run_chunks)
from asvp.runtime.fingerprint.references import train_reference_students
from asvp.tasks import get_task
from asvp.tasks.data import TRAIN_IMAGES, random_crops

CAL_MARGIN = 0.4  # eps is calibrated to this share of the budget on the calibration data (held-out is other images)
CAL_CROPS, CAL_SIZE, CAL_SEED = 48, 96, 2468  # the owner's calibration data (training-image crops)
BASIS_DB = 50.0  # the verifier's basis marks: this PSNR away from the clean output on the probes (key-free scale)
CALIBRATION_DIRECTION = "asvp-fingerprint-public-calibration-direction"  # public, key-independent
BIAS_SEED0 = 200  # mark-time bias students: seeds 200, 201, ... (the verifier's reference students are 100, ...)
BIAS_BUDGET = (96, 300)  # their queries and steps: the quick attack budget, as the reference students


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


def calibration_psnr(out: np.ndarray, target: np.ndarray) -> float:
    """PSNR of the mean squared error over all calibration crops (outputs clipped to [0, 1], as deployed). Pooled,
    not the mean of per-crop PSNRs: a nearly flat crop (a teacher error near zero) would otherwise dominate the
    drop and make the mark needlessly weak."""
    return psnr_from_mse(max(pooled_mse(out, target, clip=True), 1e-12))  # target: ground truth, already in [0, 1]


@dataclass
class KeySpace:
    """Everything about a mark that does not depend on the key: the feature, its principal directions W, the
    verifier's basis scale, the public key space R (equalised on the probes and, with cost calibration,
    restricted to the cost-neutral directions) and the owner's calibration data with the key directions'
    responses on it. mark.mark_file draws the key's scale from it; research/fingerprint_key_strength.py studies how
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
    f = run_chunks(open_session(expose_tensors(model, [feat.output])), x, outputs=[feat.output])[0]
    w = principal_directions(f, m)
    probe = ProbeModel(model_path, feat.output, feat.channels)
    ks = KeySpace(feat, probe, x, probe.run(x), w)
    # The basis scale is calibrated on a fixed public direction; the verifier recomputes the responses from it,
    # so nothing it uses depends on the key (the null stays exact).
    basis_eps = ks.basis_eps = ks.scale_for(key_direction(CALIBRATION_DIRECTION, key_dim(m)), BASIS_DB)
    raw_probes = probe.basis_changes(x, ks.base, w, basis_eps)
    r = ks.r = response_equalizer(gram_matrix(raw_probes))
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
        gram = gram_matrix(delta)
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

