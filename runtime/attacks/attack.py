"""Distillation attacks on served (clean or ASVP-defended) ONNX models: `asvp attack`.

Threat model (docs/protection.md has the long form). The attacker
  * can only QUERY the served model: an ONNX Runtime session of the clean or defended file, a black box that
    returns the graph outputs for an input batch (for `feature` attacks also the exposed feature maps);
  * makes its own queries from the training images (TRAIN_IMAGES crops, degraded with the task's public
    degradation); it throws the clean crops away and never sees the held-out images;
  * trains a smaller student (runtime/students.py) on the answers, with the same budget, seed and queries
    whether the teacher is clean or defended; the only difference is the answers.

Kinds:
  output    the student regresses the teacher's outputs (L1).
  feature   also FitNets hints: 1x1 adapters align student layers to the teacher's exposed features (the tap
            outputs of a tap-defended model; for an inline-defended model the perturbed tensors the network
            consumes; for the clean model the same tensors, exposed with onnx-graphsurgeon).
  adaptive  knows ASVP is there and tries to undo it before distilling: for tap placement it inverts the
            perturbation on the received features (SVD of M', divide the top-k_n singular values by the known h,
            with k_n re-derived from the adaptive rule); for inline placement it filters the received outputs
            (super-resolution: back-projection onto the received low-resolution input; other tasks: a light
            Gaussian smoothing of the predicted residual).
  fitnets-0.1, fitnets-1, fitnets-10, direct, staged
            the attacker ladder's feature rungs (LADDER): `feature` with hint weight 0.1 / 1 / 10; alignment
            without an adapter by a width-matched student; a feature stage (hints alone) then an output stage.
  larger    `output` with a larger student: the teacher's own architecture and width (students.LARGER).
`asvp attack --kind ladder` runs every rung (runtime/attacks/ladder.py).

Work is shared: answers are cached per model and queries; students are cached by what determines them (task,
model digest, answers, kind, budget, seed) in a StudentStore (on disk under the report directory), so a clean
student whose recipe coincides between rungs (output and adaptive-inline, feature and fitnets-0.1) is trained
once, and when the defended model's answers equal the clean one's (tap placement, output rungs) the defended
student IS the clean student (same seed, same data, same deterministic training) and is not retrained.

Evaluation is done by the harness, not the attacker: held-out images (never queried), PSNR/SSIM against the
ground truth with asvp.metrics.psnr_ssim, for both teachers and all students.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.exporter.export import export_bundled
from asvp.exporter.teachers.bundled import has_weights
from asvp.graph_passes.candidates import feature_candidates
from asvp.graph_passes.defend import defend_file
from asvp.graph_passes.expose import expose_tensors
from asvp.graph_passes.metadata import DefenceInfo, read_defence
from asvp.io import atomic_output, require_file, write_text_atomic
from asvp.method import adaptive_k_mask
from asvp.metrics import pooled_psnr, psnr_ssim
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.attacks.students import STUDENTS, TrainBudget, describe_student, predict, train_student
from asvp.runtime.engines.sessions import SessionFromOnnx
from asvp.runtime.evaluation.report import Section, dumps, fmt, md_table, new_figure, write_report
from asvp.runtime.evaluation.stats import INTERVALS, counts_above, paired_drop, plateau
from asvp.tasks import get_task
from asvp.tasks.data import TRAIN_IMAGES, random_crops

# The attacker ladder's feature rungs (issue 13): feature distillation with a changed recipe, as named kinds.
# Each maps to the changes it makes to the preset's TrainBudget (runtime/attacks/students.py).
LADDER = {
    "fitnets-0.1": {"hint_weight": 0.1},  # FitNets hints through 1x1 adapters, hint weight 0.1 (= `feature`)
    "fitnets-1": {"hint_weight": 1.0},
    "fitnets-10": {"hint_weight": 10.0},
    "direct": {"hint_weight": 1.0, "adapter": False},  # no adapter: a width-matched student aligned directly
    "staged": {"hint_weight": 1.0, "feature_stage": 0.5},  # hints alone for half the steps, then outputs alone
}
# Rungs that distil outputs with a changed recipe.
OUTPUT_RUNGS = {"larger": {"student": "larger"}}  # the teacher's own architecture and width
KINDS = ("output", "feature", "adaptive", *LADDER, *OUTPUT_RUNGS)


def kind_for_placement(placement: str) -> str:
    """The distillation that reaches what a placement perturbs: tap -> the exposed features, inline -> outputs."""
    return "feature" if placement == "tap" else "output"
ATTACK_VERSION = 4  # bump when a change makes cached results stale
TEACHER_DROP_LIMIT_DB = 0.1  # what "negligible" teacher degradation means here (the sweep's constraint too)
PAPER_STUDENT_DB = 4.0  # "students lose up to 4 dB PSNR"
PAPER_SSIM_PCT = (60.0, 75.0)  # "and 60-75% SSIM"
# One thread for torch and ONNX Runtime: these models are tiny, and on 2 shared cores two threads per process
# measured 10-30x slower per training step than one (oversubscription), never faster.
THREADS = 1


class single_thread:
    """Context manager: torch on THREADS threads, restored afterwards."""

    def __enter__(self):
        self.prev = torch.get_num_threads()
        torch.set_num_threads(THREADS)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.prev)


@dataclass(frozen=True)
class Preset:
    name: str
    tasks: tuple
    pool: int  # number of queries (crops) the attacker sends
    crop: int  # side of the clean crop a query is made from (the query is its degraded version)
    train: TrainBudget
    noise_seeds: int = 2  # extra clean students (seeds + 1, + 2, ...) that measure seed-to-seed noise
    seeds: int = 1  # paired seeds when the caller does not say (--seeds)
    rungs: tuple = ()  # the ladder's rungs for this preset (empty: every rung, LADDER_RUNGS)
    val_frac: float = 0.0  # share of the queries held out of training: the validation split (convergence)
    convergence: int = 0  # > 1: the ladder also runs the output rung at this multiple of the steps
    device: str = "cpu"  # where students train: cpu | cuda | auto (CUDA when available)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["rungs"] = list(self.rungs)
        d["train"] = self.train.to_dict()
        return d

    def with_(self, **changes) -> "Preset":
        return Preset(**{**{f: getattr(self, f) for f in self.__dataclass_fields__}, **changes})


# The ladder's rungs, in order (`--kind ladder`).
LADDER_RUNGS = ("output", "fitnets-0.1", "fitnets-1", "fitnets-10", "direct", "staged", "adaptive", "larger")

# Wall times are measured in benchmarks/results/ladder-*.md (docs/protection.md "Presets").
PRESETS = {
    # one task, one seed: a smoke test of a single attack (~1 min), or of the ladder's cheap rungs
    "quick": Preset("quick", ("sr",), pool=96, crop=64, train=TrainBudget(steps=300, batch=8),
                    rungs=("output", "fitnets-1", "direct", "larger")),
    # every task and rung with 5 paired seeds, a validation split and a 2x-budget output rung, sized to <= 45 min
    # on 2 CPU cores
    "standard": Preset("standard", tuple(STUDENTS), pool=128, crop=48, train=TrainBudget(steps=240, batch=8),
                       noise_seeds=0, seeds=5, val_frac=0.125, convergence=2),
    # the long run: more queries, steps and seeds; students on CUDA when torch sees a GPU
    "thorough": Preset("thorough", tuple(STUDENTS), pool=512, crop=64, train=TrainBudget(steps=2000, batch=16),
                       noise_seeds=0, seeds=10, val_frac=0.125, convergence=2, device="auto"),
    # the earlier single-kind preset (kept: results in docs/protection.md were made with it)
    "full": Preset("full", tuple(STUDENTS), pool=256, crop=64, train=TrainBudget(steps=800, batch=8)),
}


def get_preset(name: str, steps: int | None = None, pool: int | None = None) -> Preset:
    if name not in PRESETS:
        raise AsvpError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    p = PRESETS[name]
    if steps is not None:
        if not isinstance(steps, int) or steps < 1:
            raise AsvpError(f"steps must be >= 1, got {steps}")
        p = p.with_(train=TrainBudget(**{**asdict(p.train), "steps": steps}))
    if pool is not None:
        if not isinstance(pool, int) or pool < 2:
            raise AsvpError(f"pool must be >= 2 queries, got {pool}")
        p = p.with_(pool=pool)
    return p


def split_queries(queries: np.ndarray, val_frac: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(training queries, validation queries or None): the last round(val_frac x P) queries are held out
    (at least 1 and leaving at least 2 to train on when val_frac > 0)."""
    if val_frac <= 0:
        return queries, None
    nv = min(max(1, int(round(val_frac * len(queries)))), len(queries) - 2)
    if nv < 1:
        return queries, None
    return queries[:-nv], queries[-nv:]


# ---- the served model (black box) -------------------------------------------------------------------------

def file_digest(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


@dataclass
class Feature:
    """One feature map the attacker receives: `key` (the clean tensor name, shared by clean and defended
    models), `output` (the graph output that carries it), and its relative depth among candidate nodes."""

    key: str
    output: str | None
    channels: int | None = None
    depth: float = 0.5


class ServedModel:
    """The attacker's black box: an ONNX Runtime session over a served model (runtime.engines.sessions, one thread);
    `query` returns (output, [features]) for a batch."""

    def __init__(self, path: str | os.PathLike, expose: list[str] | None = None, read: list[str] | None = None):
        self.path = str(path)
        model = load_model(path)
        self.input_name, self.output_name = image_io(model)
        self.read = list(read or [])
        if expose:
            model = expose_tensors(model, list(expose))
        self.session = SessionFromOnnx(model, threads=THREADS, inter_op_threads=1)()
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


def defence_of(path: str | os.PathLike) -> DefenceInfo:
    """The defended model's self-description (placement, nodes, config) from its metadata."""
    return read_defence(load_model(path))


def _consumed_tensor(clean_model, defended_model, tensor: str) -> str:
    """In an inline-defended graph, the tensor that replaced `tensor` for its consumers (the perturbed one)."""
    consumers = [(n.name, i) for n in clean_model.graph.node for i, t in enumerate(n.input) if t == tensor and n.name]
    by_name = {n.name: n for n in defended_model.graph.node}
    for name, i in consumers:
        node = by_name.get(name)
        if node is not None and i < len(node.input) and node.input[i] != tensor:
            return node.input[i]
    raise AsvpError(f"cannot find the perturbed replacement of {tensor!r} in the inline-defended model")


def feature_plan(clean_path, defended_path) -> tuple[str, list[Feature], list[str], AsvpConfig | None]:
    """(placement, features to read from the defended model, tensors to expose on the clean model, config)."""
    info = defence_of(defended_path)
    if not info.nodes:
        raise AsvpError(f"{defended_path} records no defended nodes (metadata asvp.nodes); is it an asvp-defended model?")
    clean_model = load_model(clean_path)
    cands = [c.output for c in feature_candidates(clean_model)]
    feats = []
    defended_model = load_model(defended_path) if info.placement != "tap" else None
    for n in info.nodes:
        depth = cands.index(n.tensor) / max(len(cands) - 1, 1) if n.tensor in cands else 0.5
        if info.placement == "tap":
            out = n.tap_output  # None: the feature attack below reports it
        else:
            try:
                out = _consumed_tensor(clean_model, defended_model, n.tensor)
            except AsvpError:
                out = None  # only the feature attack needs it
        feats.append(Feature(n.tensor, out, n.channels, depth))
    return info.placement, feats, [f.key for f in feats], info.config


# ---- queries and answers --------------------------------------------------------------------------------------

def make_queries(task: str, count: int, crop: int, seed: int) -> np.ndarray:
    """The attacker's queries: degraded random crops of the TRAINING images (never the held-out ones).

    The clean crops are used only to synthesise the degraded queries and are then discarded.
    """
    spec = get_task(task)
    mult = spec.scale * spec.size_multiple
    crop -= crop % mult
    g = torch.Generator().manual_seed(seed)
    inputs, _discarded_clean = spec.make_pair(random_crops(TRAIN_IMAGES, count, crop, g), g)
    return inputs.numpy().astype(np.float32)


def get_answers(model: ServedModel, queries: np.ndarray, cache_dir: Path | None, tag: str,
                progress: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Query the served model (or reload the cached answers: key = model file digest + queries + outputs read).

    Features are kept as float16 (the attacker's storage; relative error ~1e-3).
    """
    h = hashlib.sha256()
    h.update(file_digest(model.path).encode())
    h.update(queries.tobytes())
    h.update(json.dumps(model.read).encode())
    h.update(str(model.session.get_outputs()[0].name).encode())
    key = h.hexdigest()[:16]
    path = cache_dir / f"answers-{tag}-{key}.npz" if cache_dir else None
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


# ---- the adaptive attacker's transforms ------------------------------------------------------------------

def invert_asvp(feat: np.ndarray, cfg: AsvpConfig) -> tuple[np.ndarray, np.ndarray]:
    """Undo ASVP on received features M' = M + (h-1) U_k U_k^T M, knowing (h, k, k_mode, tau).

    U (and V) are unchanged by ASVP and, for h > 1, the amplified singular values stay on top, so the attacker
    takes the SVD of M', tries k' = 1..k, divides the top k' singular values by h, and keeps the k' that the
    adaptive rule re-derives from the recovered spectrum (fixed mode: k' = k). Returns (features, k' per sample).
    For h < 1 the amplified values can re-order and this inversion is not exact (measured, not assumed).
    """
    f = torch.from_numpy(np.asarray(feat, dtype=np.float64))
    n, c = f.shape[:2]
    m = f.reshape(n, c, -1)
    evals, evecs = torch.linalg.eigh(m @ m.transpose(1, 2))
    evals, evecs = evals.flip(-1).clamp_min(0), evecs.flip(-1)
    k = min(cfg.k, c)
    ks = np.full(n, k, dtype=np.int64)
    if cfg.k_mode == "adaptive":
        for i in range(n):
            best, best_gap = k, math.inf
            for cand in range(1, k + 1):
                e = evals[i : i + 1].clone()
                e[:, :cand] /= cfg.h**2
                got = int(adaptive_k_mask(e, cfg.tau, k, True).sum())
                if got == cand:
                    best = cand
                    break
                if abs(got - cand) < best_gap:
                    best, best_gap = cand, abs(got - cand)
            ks[i] = best
    mask = (torch.arange(k).reshape(1, k) < torch.from_numpy(ks).reshape(n, 1)).to(torch.float64)
    u = evecs[:, :, :k]
    coeff = torch.einsum("nck,ncp->nkp", u, m) * mask.unsqueeze(-1)
    rec = m + (1.0 / cfg.h - 1.0) * torch.einsum("nck,nkp->ncp", u, coeff)
    return rec.reshape(f.shape).numpy().astype(np.float32), ks


def _gauss(t: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=t.dtype)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    c = t.shape[1]
    t = F.pad(t, (r, r, r, r), mode="reflect")
    t = F.conv2d(t, k.reshape(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(t, k.reshape(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def filter_outputs(task: str, outputs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """The adaptive attacker's clean-up of received outputs (inline placement).

    sr: 3 steps of iterative back-projection onto the query (the x2 bicubic degradation is public), which
    removes whatever part of the perturbation is inconsistent with the low-resolution input.
    others: Gaussian smoothing (sigma 0.7 px) of the predicted residual (output - input).
    """
    spec = get_task(task)
    y, x = torch.from_numpy(outputs).float(), torch.from_numpy(queries).float()
    if spec.scale > 1:
        s = spec.scale
        for _ in range(3):
            down = F.interpolate(y, size=x.shape[-2:], mode="bicubic", antialias=True, align_corners=False)
            y = y + F.interpolate(x - down, scale_factor=s, mode="bicubic", align_corners=False)
    else:
        y = x + _gauss(y - x, 0.7)
    return y.numpy().astype(np.float32)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole set (float64)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# ---- one task ------------------------------------------------------------------------------------------------

def _metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    p, s = psnr_ssim(pred, target)
    return {"psnr": p, "ssim": s}


def _drop(ref: dict, got: dict) -> dict:
    return {"db": ref["psnr"] - got["psnr"],
            "ssim_pct": 100.0 * (ref["ssim"] - got["ssim"]) / ref["ssim"] if ref["ssim"] else math.nan}


def prepare_models(task: str, workdir: Path, clean=None, defended=None, config: AsvpConfig | None = None,
                   nodes=None, defended_name: str | None = None) -> tuple[Path, Path, AsvpConfig | None]:
    """Resolve (and if needed create) the clean and defended ONNX files for a task.

    Missing ones are made in `workdir`: clean.onnx (the bundled teacher, exported) and the defended model
    (graph_passes.defend of the clean one with `config`, default AsvpConfig(), and `nodes`, default: defend's own
    choice).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if clean is None:
        clean = workdir / "clean.onnx"
        if not clean.exists():
            export_bundled(task, clean)
    clean = require_file(clean, "clean model")
    if defended is None:
        cfg = (config or AsvpConfig()).validate()
        sel = hashlib.sha256(json.dumps(nodes).encode()).hexdigest()[:6]
        defended = workdir / (defended_name or f"defended-{cfg.placement}-{cfg.digest()}-{sel}.onnx")
        if not defended.exists():
            defended.parent.mkdir(parents=True, exist_ok=True)
            defend_file(clean, defended, nodes=nodes, config=cfg)
    defended = require_file(defended, "defended model")
    return Path(clean), Path(defended), config


class StudentStore:
    """Trained students' results {key: (metrics, record)}, shared across rungs and runs: in memory, and on disk
    (one JSON file per student under `root`) when a root is given, so an interrupted ladder resumes per student."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else None
        self.mem: dict = {}

    @staticmethod
    def _h(key) -> str:
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def _path(self, key) -> Path | None:
        return self.root / f"student-{self._h(key)}.json" if self.root is not None else None

    def __contains__(self, key) -> bool:
        if self._h(key) in self.mem:
            return True
        path = self._path(key)
        if path is None or not path.exists():
            return False
        try:
            self.mem[self._h(key)] = tuple(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            return False
        return True

    def __getitem__(self, key):
        if key not in self:
            raise KeyError(key)
        return self.mem[self._h(key)]

    def __setitem__(self, key, value) -> None:
        self.mem[self._h(key)] = tuple(value)
        path = self._path(key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(list(value), default=float))


def attack_task(task: str, clean_path: Path, defended_path: Path, kind: str, preset: Preset, seed: int,
                workdir: Path | None, progress: bool = True, clean_students=None,
                seeds: int = 1, interval: str = "t") -> dict:
    """Distil students from the clean and the defended model of one task and evaluate everything.

    clean_students: optional store {key: (metrics, record)} shared across calls (the sweep, the ladder: a dict or a
    StudentStore), so students of the same teacher with the same answers and recipe are trained once. seeds > 1:
    also students for seeds seed+1 .. seed+seeds-1, a clean and a defended one sharing each seed (same queries),
    and the paired drop with its confidence interval (runtime.evaluation.stats, `interval` "t" or "bootstrap")
    under "paired". preset.val_frac > 0: that share of the queries is held out of training, and every student
    records its validation curve and plateau verdict (stats.plateau). Every student also gets `psnr_to_teacher`:
    its PSNR against the clean teacher's outputs on the held-out images (how close the copy is).
    """
    t0 = time.perf_counter()
    spec = get_task(task)
    placement, feats, expose, cfg = feature_plan(clean_path, defended_path)
    base_kind = ("feature" if kind in LADDER else "output" if kind in OUTPUT_RUNGS
                 else kind if kind != "adaptive" else kind_for_placement(placement))
    use_feats = base_kind == "feature"
    if use_feats and any(f.output is None for f in feats):
        what = "tap output" if placement == "tap" else "perturbed replacement tensor"
        raise AsvpError(f"{defended_path}: cannot find the {what} of node(s) "
                        f"{[f.key for f in feats if f.output is None]} needed by the {kind} attack")
    all_queries = make_queries(task, preset.pool, preset.crop, seed)
    cache = workdir / "answers" if workdir is not None else None

    clean_model = ServedModel(clean_path, expose=expose if use_feats else None, read=expose if use_feats else None)
    read_def = [f.output for f in feats] if use_feats else None
    def_model = ServedModel(defended_path, read=read_def) if placement == "tap" or not read_def else \
        ServedModel(defended_path, expose=read_def, read=read_def)
    y_c_all, f_c_all = get_answers(clean_model, all_queries, cache, "clean", progress)
    y_d_all, f_d_all = get_answers(def_model, all_queries, cache, "defended", progress)
    queries, val_q = split_queries(all_queries, preset.val_frac)
    nt = len(queries)
    y_c, f_c, y_d, f_d = y_c_all[:nt], [f[:nt] for f in f_c_all], y_d_all[:nt], [f[:nt] for f in f_d_all]
    identical = bool(np.array_equal(y_c_all, y_d_all) and all(np.array_equal(a, b) for a, b in zip(f_c_all, f_d_all)))
    meta = [{"name": f.key, "hw": tuple(fc.shape[-2:]), "depth": f.depth} for f, fc in zip(feats, f_c)] if f_c else []

    # held-out evaluation of the two served teachers (the harness's side, not the attacker's)
    h_in, h_tgt = spec.heldout()
    h_in_np, h_tgt_np = h_in.numpy(), h_tgt.numpy()
    t_clean_out = clean_model.query(h_in_np, 2)[0]
    t_def_out = def_model.query(h_in_np, 2)[0]
    teacher = {"clean": _metrics(t_clean_out, h_tgt_np), "defended": _metrics(t_def_out, h_tgt_np),
               "heldout_output_max_abs_diff": float(np.max(np.abs(t_def_out - t_clean_out))),
               "query_output_max_abs_diff": float(np.max(np.abs(y_d_all - y_c_all)))}

    budget = preset.train
    if kind in LADDER:
        budget = TrainBudget(**{**asdict(budget), **LADDER[kind]})
    elif kind in OUTPUT_RUNGS:
        budget = TrainBudget(**{**asdict(budget), **OUTPUT_RUNGS[kind]})
    store = {} if clean_students is None else clean_students
    digests = {"clean": file_digest(clean_path), "defended": file_digest(defended_path)}  # hashed once, not per student
    base_key = (ATTACK_VERSION, task, base_kind, tuple(expose) if use_feats else (),
                json.dumps(preset.to_dict(), sort_keys=True), json.dumps(budget.to_dict(), sort_keys=True))
    val_targets = {"clean": y_c_all[nt:], "defended": y_d_all[nt:]}

    def student(name, targets, fs, s, val_t):
        m, rec = train_student(task, queries, targets, seed=s, budget=budget, feats=fs if use_feats else None,
                               feat_meta=meta if use_feats else None, desc=f"{task} student<-{name}",
                               progress=progress, val=(val_q, val_t) if val_q is not None else None,
                               device=preset.device)
        pred = predict(m, h_in, device=preset.device)
        met = {**_metrics(pred, h_tgt_np), "psnr_to_teacher": pooled_psnr(pred, t_clean_out, clip=True)}
        if "val_curve" in rec:
            met["plateau"] = plateau(rec["val_curve"])
            met["val_l1_final"] = rec["val_curve"][-1][1] if rec["val_curve"] else None
        return met, rec

    def clean_student(s):
        ck = base_key + ("clean", digests["clean"], s)
        if ck not in store:
            store[ck] = student("clean", y_c, [f.astype(np.float32) for f in f_c], s, val_targets["clean"])
        return store[ck]

    def defended_student(name, targets, fs, s, val_t):
        """A student of the defended teacher (or of the attacker's clean-up of its answers, `name`)."""
        if identical and name == "defended":  # the answers are the clean ones: the same student
            return clean_student(s)
        dk = base_key + (name, digests["defended"], s)
        if dk not in store:
            store[dk] = student(name, targets, [f.astype(np.float32) for f in fs], s, val_t)
        return store[dk]

    students, records, extra = {}, {}, {}
    students["clean"], records["clean"] = clean_student(seed)
    students["defended"], records["defended"] = defended_student("defended", y_d, f_d, seed, val_targets["defended"])
    adaptive_data = None  # (name, targets, features, validation targets) the adaptive student learns from
    if kind == "adaptive":
        if placement == "tap":
            known = cfg or AsvpConfig()
            inv = [invert_asvp(f.astype(np.float32), known) for f in f_d]
            f_a = [r for r, _ in inv]
            extra["inversion"] = {
                "config_known": cfg is not None, "config": known.to_dict(),
                "per_feature": [{"tensor": ft.key,
                                 "rel_err_received": rel_err(fd.astype(np.float32), fc.astype(np.float32)),
                                 "rel_err_inverted": rel_err(fa, fc.astype(np.float32)),
                                 "k_used_mean": float(np.mean(ks))}
                                for ft, fd, fa, fc, (_, ks) in zip(feats, f_d, f_a, f_c, inv)]}
            adaptive_data = ("defended+inverted", y_d, f_a, val_targets["defended"])
        else:
            y_a = filter_outputs(task, y_d_all, all_queries)
            extra["filter"] = {"rel_err_received": rel_err(y_d, y_c), "rel_err_filtered": rel_err(y_a[:nt], y_c),
                               "method": "back-projection x3" if spec.scale > 1 else "residual Gaussian sigma 0.7"}
            adaptive_data = ("defended+filtered", y_a[:nt], f_d, y_a[nt:])
        students["adaptive"], records["adaptive"] = defended_student(*adaptive_data[:3], seed, adaptive_data[3])
    noise = None
    if preset.noise_seeds:
        others = [clean_student(seed + i)[0] for i in range(1, preset.noise_seeds + 1)]
        extra["clean_students_other_seeds"] = others
        psnrs = [students["clean"]["psnr"]] + [o["psnr"] for o in others]
        noise = max(psnrs) - min(psnrs)

    paired = None
    if seeds > 1:  # paired students: a clean and a defended one per seed, same queries
        per_seed = [{"seed": seed, **students}]
        for s in range(seed + 1, seed + seeds):
            one = {"seed": s, "clean": clean_student(s)[0],
                   "defended": defended_student("defended", y_d, f_d, s, val_targets["defended"])[0]}
            if adaptive_data is not None:
                one["adaptive"] = defended_student(*adaptive_data[:3], s, adaptive_data[3])[0]
            per_seed.append(one)
        paired = {"seeds": [p["seed"] for p in per_seed], "per_seed": per_seed,
                  "student": paired_drop([p["clean"]["psnr"] for p in per_seed],
                                         [p["defended"]["psnr"] for p in per_seed], interval=interval).to_dict()}
        if adaptive_data is not None:
            paired["student_adaptive"] = paired_drop([p["clean"]["psnr"] for p in per_seed],
                                                     [p["adaptive"]["psnr"] for p in per_seed],
                                                     interval=interval).to_dict()
    per = paired["per_seed"] if paired else [{"seed": seed, **students}]
    extra["convergence"] = convergence_summary(per, val_q is not None)

    drops = {"teacher": _drop(teacher["clean"], teacher["defended"]),
             "student": _drop(students["clean"], students["defended"])}
    if "adaptive" in students:
        drops["student_adaptive"] = _drop(students["clean"], students["adaptive"])
    return {
        "task": task, "title": spec.title, "kind": kind, "base_kind": base_kind, "placement": placement,
        "config": cfg.to_dict() if cfg else None,
        "nodes": [{"tensor": f.key, "read_as": f.output, "channels": f.channels, "depth": round(f.depth, 3)}
                  for f in feats],
        "models": {"clean": str(clean_path), "defended": str(defended_path),
                   "clean_digest": digests["clean"], "defended_digest": digests["defended"]},
        "queries": {"count": int(len(all_queries)), "train": int(nt), "validation": int(len(all_queries) - nt),
                    "shape": list(all_queries.shape[1:]), "crop": preset.crop, "seed": seed,
                    "images": "TRAIN_IMAGES (held-out images never queried)"},
        "answers_identical": identical,
        "student_model": describe_student(task, budget.size), "budget": budget.to_dict(),
        "hint_layers": records["clean"]["hint_layers"],
        "teacher": teacher, "students": students, "drops": drops,
        "seed_noise_db": noise, "noise_margin_db": noise_margin(noise), "paired": paired, **extra,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def convergence_summary(per_seed: list[dict], has_val: bool) -> dict:
    """Over the clean students of all seeds: mean PSNR to the clean teacher (held-out images), and with a
    validation split how many validation curves plateaued (stats.plateau) and the mean last-stretch improvement."""
    cl = [p["clean"] for p in per_seed]
    out = {"clean_psnr_to_teacher_mean": float(np.mean([c["psnr_to_teacher"] for c in cl])),
           "clean_psnr_mean": float(np.mean([c["psnr"] for c in cl])), "students": len(cl)}
    if has_val:
        pl = [c["plateau"] for c in cl if c.get("plateau") and c["plateau"]["plateaued"] is not None]
        out.update({"plateaued": sum(bool(p["plateaued"]) for p in pl), "judged": len(pl),
                    "rel_improvement_mean": float(np.mean([p["rel_improvement"] for p in pl])) if pl else None})
    return out


def noise_margin(noise: float | None) -> float:
    """A student drop counts as real only above this: 1.5 x the PSNR range of the clean students over seeds
    (about 2.5 standard deviations for 3 seeds), and at least 0.1 dB."""
    return max(0.1, 1.5 * noise) if noise is not None else 0.1


# ---- the whole attack ----------------------------------------------------------------------------------------

@dataclass
class AttackResult:
    kind: str
    preset: str
    seed: int
    tasks: list = field(default_factory=list)  # one dict per task (attack_task)
    skipped: list = field(default_factory=list)  # [{task, reason}]: preset tasks without bundled teacher weights
    claims: list = field(default_factory=list)  # [{claim, holds, evidence}]
    out: str | None = None
    seconds: float = 0.0
    seeds: int = 1  # paired seeds per teacher (seed .. seed + seeds - 1)
    interval: str = "t"

    def to_dict(self) -> dict:
        return asdict(self)

    def summary_lines(self) -> list[str]:
        return [markdown_table(self.tasks) + "".join(f"\nskipped {s['task']}: {s['reason']}" for s in self.skipped)
                + "\n\n" + claims_text(self.claims),
                f"\n{len(self.tasks)} task(s) in {self.seconds:.0f} s" + (f"; report in {self.out}" if self.out else "")]


def _paired(r: dict, key: str) -> dict | None:
    p = (r.get("paired") or {}).get(key)
    return p if p and p.get("n", 1) > 1 else None


def is_paired(r: dict, key: str = "student") -> bool:
    """Whether the result's `key` drop has paired seeds (n > 1), so its verdict comes from the interval."""
    return _paired(r, key) is not None


def drop_counts(r: dict, key: str = "student", level: float = 0.0) -> bool:
    """Whether a student drop counts (exceeds `level`): with paired seeds, the interval rule of
    runtime.evaluation.stats (interval excludes level, mean - level >= threshold); otherwise drop > level + noise margin."""
    p = _paired(r, key)
    if p is not None:
        return counts_above(p, level)
    if inconclusive(r, key):
        return False
    return r["drops"][key]["db"] > level + r["noise_margin_db"]


def inconclusive(r: dict, key: str = "student") -> bool:
    """One seed pair and no measured seed noise (preset noise_seeds 0): the drop cannot be judged, and does not
    count. (Students of different seeds differ by tenths of a dB, so a lone pair decides nothing.)"""
    return _paired(r, key) is None and "seed_noise_db" in r and r["seed_noise_db"] is None


def mean_drop(r: dict, key: str = "student") -> float:
    """The paired mean drop when there are paired seeds, else the single-seed drop."""
    p = _paired(r, key)
    return p["mean"] if p is not None else r["drops"][key]["db"]


def _drop_text(r: dict, key: str = "student") -> str:
    p = _paired(r, key)
    if p is not None:
        return (f"{p['mean']:+.2f} dB [{100 * p['confidence']:g}% CI {p['ci_low']:+.2f}, {p['ci_high']:+.2f}, "
                f"n={p['n']}]")
    if inconclusive(r, key):
        return f"{r['drops'][key]['db']:+.2f} dB (1 seed, no noise estimate: inconclusive)"
    return f"{r['drops'][key]['db']:+.2f} dB (margin {r['noise_margin_db']:.2f})"


def claims(rows: list[dict]) -> list[dict]:
    """Which of the paper's claims hold in these measurements (computed, thresholds stated). With paired seeds
    (attack_task's seeds > 1) a drop counts by its confidence interval, otherwise by the seed-noise margin."""
    if not rows:
        return []
    out = []
    td = [(r["task"], r["drops"]["teacher"]["db"]) for r in rows]
    ok = [t for t, d in td if d <= TEACHER_DROP_LIMIT_DB]
    out.append({"claim": f"the defended teacher's own drop is negligible (<= {TEACHER_DROP_LIMIT_DB} dB PSNR)",
                "holds": len(ok) == len(td),
                "evidence": f"{len(ok)}/{len(td)} tasks; teacher drops: " + ", ".join(f"{t} {d:+.2f} dB" for t, d in td)})
    real = [r["task"] for r in rows if drop_counts(r)]
    out.append({"claim": "students distilled from the defended teacher are worse than from the clean one "
                         "(drop above seed noise; with paired seeds: interval excludes 0 and mean >= threshold)",
                "holds": len(real) == len(rows),
                "evidence": f"{len(real)}/{len(rows)} tasks count; student drops: "
                            + ", ".join(f"{r['task']} {_drop_text(r)}" for r in rows)})
    amp = [(r["task"], mean_drop(r), r["drops"]["teacher"]["db"], r["noise_margin_db"]) for r in rows]
    more = [r["task"] for r in rows if drop_counts(r, "student", r["drops"]["teacher"]["db"])]
    out.append({"claim": "the defence hurts the distilled copy more than the teacher itself "
                         "(student drop > teacher drop + noise margin; with paired seeds: interval above the "
                         "teacher drop)",
                "holds": len(more) == len(amp),
                "evidence": f"{len(more)}/{len(amp)} tasks; student vs teacher drop: "
                            + ", ".join(f"{t} {s:+.2f} vs {d:+.2f} dB" for t, s, d, _ in amp)})
    best = max(rows, key=mean_drop)
    mx = mean_drop(best)
    out.append({"claim": f"student PSNR drop of paper scale (up to {PAPER_STUDENT_DB:g} dB; counted as holding "
                         f"if >= {PAPER_STUDENT_DB / 2:g} dB somewhere)",
                "holds": mx >= PAPER_STUDENT_DB / 2,
                "evidence": f"largest student drop {mx:+.2f} dB ({best['task']})"})
    ss = max(r["drops"]["student"]["ssim_pct"] for r in rows)
    out.append({"claim": f"student SSIM drop of {PAPER_SSIM_PCT[0]:g}-{PAPER_SSIM_PCT[1]:g}%",
                "holds": ss >= PAPER_SSIM_PCT[0], "evidence": f"largest student SSIM drop {ss:.1f}%"})
    both = [r["task"] for r in rows if r["drops"]["teacher"]["db"] <= TEACHER_DROP_LIMIT_DB and drop_counts(r)]
    out.append({"claim": "protection at negligible teacher cost (both of the first two on the same task)",
                "holds": len(both) == len(rows),
                "evidence": f"{len(both)}/{len(rows)} tasks" + (f": {', '.join(both)}" if both else "")})
    ad = [(r["task"], mean_drop(r, "student_adaptive"), mean_drop(r), r["noise_margin_db"])
          for r in rows if "student_adaptive" in r["drops"]]
    if ad:
        surv = [r["task"] for r in rows if "student_adaptive" in r["drops"] and drop_counts(r, "student_adaptive")]
        out.append({"claim": "the protection survives an adaptive attacker who knows ASVP is present",
                    "holds": len(surv) == len(ad),
                    "evidence": f"{len(surv)}/{len(ad)} tasks keep a drop above noise; adaptive vs naive student drop: "
                                + ", ".join(f"{t} {a:+.2f} vs {d:+.2f} dB" for t, a, d, _ in ad)})
    return out


def claims_text(cl: list[dict]) -> str:
    return "\n".join(f"- **{'holds' if c['holds'] else 'does not hold'}**: {c['claim']}. {c['evidence']}." for c in cl)


def markdown_table(rows: list[dict]) -> str:
    has_ad = any("adaptive" in r["students"] for r in rows)
    header = ["task", "placement", "kind", "teacher clean PSNR/SSIM", "teacher defended PSNR/SSIM", "teacher drop dB",
              "student<-clean PSNR/SSIM", "student<-defended PSNR/SSIM", "student drop dB", "student SSIM drop %",
              "seed spread dB (3 seeds)"]
    if has_ad:
        header[10:10] = ["student<-defended, adaptive PSNR/SSIM", "adaptive drop dB"]
    has_paired = any(_paired(r, "student") for r in rows)
    if has_paired:
        header.append("paired student drop dB (mean [95% CI], n)")
        if has_ad:
            header.append("paired adaptive drop dB (mean [95% CI], n)")
    body = []
    for r in rows:
        t, s, d = r["teacher"], r["students"], r["drops"]
        ps = lambda m: f"{m['psnr']:.2f} / {m['ssim']:.4f}"  # noqa: E731
        row = [r["task"], r["placement"], r["kind"], ps(t["clean"]), ps(t["defended"]), fmt(d["teacher"]["db"], "+.3f"),
               ps(s["clean"]), ps(s["defended"]), fmt(d["student"]["db"], "+.2f"), fmt(d["student"]["ssim_pct"], "+.1f"),
               fmt(r["seed_noise_db"], ".2f")]
        if has_ad:
            row[10:10] = [ps(s["adaptive"]) if "adaptive" in s else "-",
                        fmt(d["student_adaptive"]["db"], "+.2f") if "student_adaptive" in d else "-"]
        if has_paired:
            row.append(_ci_cell(_paired(r, "student")))
            if has_ad:
                row.append(_ci_cell(_paired(r, "student_adaptive")))
        body.append(row)
    return md_table(header, body)


def _ci_cell(p: dict | None) -> str:
    if p is None:
        return "-"
    return (f"{p['mean']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}] n={p['n']}"
            + (" counts" if p["counts"] else ""))


def bar_figure(rows: list[dict]):
    fig = new_figure(max(6.4, 1.6 * len(rows) + 2), 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(len(rows))
    bars = [("teacher", "teacher"), ("student", "student")]
    if any("student_adaptive" in r["drops"] for r in rows):
        bars.append(("student_adaptive", "student (adaptive)"))
    w = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        db = [r["drops"].get(key, {}).get("db", np.nan) for r in rows]
        pct = [r["drops"].get(key, {}).get("ssim_pct", np.nan) for r in rows]
        ax1.bar(x + (i - (len(bars) - 1) / 2) * w, db, w, label=label)
        ax2.bar(x + (i - (len(bars) - 1) / 2) * w, pct, w, label=label)
    noise = [r["noise_margin_db"] for r in rows]
    ax1.scatter(x, noise, marker="_", s=400, color="k", label="noise margin", zorder=3)
    for ax, yl in ((ax1, "PSNR drop (dB)"), (ax2, "SSIM drop (%)")):
        ax.set_xticks(x, [r["task"] for r in rows])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel(yl)
        ax.grid(True, axis="y", alpha=0.3)
    ax1.axhline(TEACHER_DROP_LIMIT_DB, color="tab:blue", lw=0.8, ls=":")
    ax1.legend(fontsize=7)
    fig.suptitle(f"Distillation attack ({rows[0]['kind']}): drops from clean to defended teacher", fontsize=9)
    return fig


def _result_key(task, clean, defended, kind, preset: Preset, seed, seeds: int = 1, interval: str = "t") -> str:
    parts = [ATTACK_VERSION, task, file_digest(clean), file_digest(defended), kind, preset.to_dict(), seed]
    if seeds != 1:  # single-seed keys stay as they were, so earlier results are still reused
        parts += [seeds, interval]
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _attack_one(t, out_dir, stack, clean, defended, config, nodes, kind, p, seed, progress, seeds=1,
                interval="t", store=None, name: str | None = None) -> dict:
    """One task of run_attack (or one rung of the ladder: `name` names its result file), resumable: a result whose
    key (model digests, kind, preset, seed) matches is reused; `store` shares trained students."""
    if out_dir is not None:
        work = out_dir / t
    else:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="asvp-attack-")))
    c, d, _ = prepare_models(t, work, clean, defended, config, nodes)
    key = _result_key(t, c, d, kind, p, seed, seeds, interval)
    cached = work / f"result-{name or kind}.json"
    if out_dir is not None and cached.exists():
        try:
            prev = json.loads(cached.read_text())
        except (OSError, json.JSONDecodeError):
            prev = {}
        if prev.get("key") == key:
            return prev["result"]
    if store is None:
        store = StudentStore(work / "students" if out_dir is not None else None)
    row = attack_task(t, c, d, kind, p, seed, work if out_dir is not None else None, progress, store, seeds=seeds,
                      interval=interval)
    if out_dir is not None:
        write_text_atomic(cached, dumps({"key": key, "result": row}))
    return row


def check_seeds(seeds) -> int:
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise AsvpError(f"seeds must be an integer >= 1 (paired students per teacher), got {seeds!r}")
    return seeds


def plan_run(task, clean, defended, config, preset: str, steps, pool, seeds, interval: str, seed):
    """Check the arguments that run_attack and the ladder share; return (preset, seeds, tasks, skipped).

    Without --task the preset's task list is used, and tasks whose teacher is not bundled are skipped and listed
    (not hidden)."""
    p = get_preset(preset, steps, pool)
    seeds = check_seeds(p.seeds if seeds is None else seeds)
    if interval not in INTERVALS:
        raise AsvpError(f"unknown interval {interval!r}; choose one of: {', '.join(INTERVALS)}")
    if not isinstance(seed, int) or seed < 0:
        raise AsvpError(f"seed must be a non-negative integer, got {seed!r}")
    tasks = [get_task(task).name] if task else list(p.tasks)
    if (clean or defended) and len(tasks) != 1:
        raise AsvpError("--clean/--defended need exactly one --task")
    if config is not None:
        config.validate()
    skipped = []
    if not task:
        for t in list(tasks):
            if not has_weights(t):
                skipped.append({"task": t, "reason": "no bundled teacher weights"})
                tasks.remove(t)
        if not tasks:
            raise AsvpError("none of the preset's tasks has bundled teacher weights")
    return p, seeds, tasks, skipped


def run_attack(task: str | None = None, clean=None, defended=None, kind: str = "output", preset: str = "quick",
               seed: int = 0, out=None, config: AsvpConfig | None = None, nodes=None, steps: int | None = None,
               pool: int | None = None, progress: bool = True, seeds: int | None = None,
               interval: str = "t") -> AttackResult:
    """One attack kind on one task or the preset's tasks (seeds None: the preset's paired seeds)."""
    if kind not in KINDS:
        raise AsvpError(f"unknown attack kind {kind!r}; choose one of: {', '.join(KINDS)}, ladder")
    p, seeds, tasks, skipped = plan_run(task, clean, defended, config, preset, steps, pool, seeds, interval, seed)
    out_dir = Path(out) if out else None
    t0 = time.perf_counter()
    rows = []
    with single_thread(), contextlib.ExitStack() as stack:
        for t in tqdm(tasks, desc=f"attack ({kind}, {p.name})", disable=not progress or len(tasks) == 1):
            rows.append(_attack_one(t, out_dir, stack, clean, defended, config, nodes, kind, p, seed, progress,
                                    seeds, interval))
    cl = claims(rows)
    res = AttackResult(kind, p.name, seed, rows, skipped, cl, str(out_dir) if out_dir else None,
                       round(time.perf_counter() - t0, 1), seeds, interval)
    if out_dir:
        md = (f"Preset `{p.name}` (queries {p.pool} x crop {p.crop}, {p.train.steps} steps x batch {p.train.batch}), "
              f"seed {seed}" + (f" (paired seeds {seed}..{seed + seeds - 1}, {interval} intervals)" if seeds > 1 else "")
              + f", kind `{kind}`. Teachers are queried through ONNX Runtime only; students never see ground "
              f"truth; PSNR/SSIM on held-out images. Drops = clean-teacher value - defended-teacher value.\n\n"
              + markdown_table(rows)
              + "".join(f"\nSkipped {s['task']}: {s['reason']}.\n" for s in skipped)
              + "\n### Paper's claims, as measured here\n\n" + claims_text(cl) + "\n")
        write_report(out_dir, {f"attack-{kind}": Section(
            f"Distillation attack: {kind}", data={"preset": p.to_dict(), "seed": seed, "seeds": seeds, "interval": interval, "kind": kind, "tasks": rows,
                                                 "skipped": skipped, "claims": cl, "seconds": res.seconds},
            markdown=md, figures={"drops": bar_figure(rows)})})
    return res
