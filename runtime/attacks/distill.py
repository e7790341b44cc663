"""The steps of one attack (runtime/attacks/task.py runs them in order), each a function over typed data:
plan_attack (AttackPlan) -> serve (the two ServedModels) -> collect_answers (Answers) -> evaluate_teachers
(HeldOut) -> Students (trains or reuses students) -> adaptive_source, noise_students, paired_students.

Students are cached by what determines them (task, model digest, answers, kind, budget, seed, code version), so a
clean student whose recipe coincides between rungs (output and adaptive-inline, feature and fitnets-0.1) is
trained once, and when the defended model's answers equal the clean ones (tap placement, output rungs) the
defended student IS the clean student (same seed, data and deterministic training) and is not retrained.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from asvp.config import AsvpConfig
from asvp.errors import AsvpError
from asvp.metrics import pooled_psnr, psnr_ssim
from asvp.onnx_utils import image_io, load_model
from asvp.runtime.attacks.adaptive import filter_outputs, invert_asvp, rel_err
from asvp.runtime.attacks.models import Feature, feature_plan
from asvp.runtime.attacks.recipes import Preset, get_rung, split_queries
from asvp.runtime.attacks.store import cache_version
from asvp.runtime.evaluation.served import RemoteServedModel, ServedModel, get_answers, make_queries
from asvp.runtime.evaluation.stats import paired_drop, plateau
from asvp.runtime.evaluation.students import TrainBudget, predict, train_student
from asvp.tasks import get_task


@dataclass
class AttackPlan:
    """What one attack_task does: the task, the rung (`kind`) and the distillation it resolves to (`base_kind`)
    against this placement, the features read, the students' budget, and the models' digests."""

    task: str
    kind: str
    base_kind: str
    placement: str
    feats: list[Feature]
    expose: list[str]
    config: AsvpConfig | None
    preset: Preset
    budget: TrainBudget
    seed: int
    clean_path: Path
    defended_path: Path
    digests: dict = field(default_factory=dict)
    remote: object = None  # RemoteOptions: the defended model is queried at this KServe v2 endpoint instead

    @property
    def use_feats(self) -> bool:
        return self.base_kind == "feature"

    def student_key(self) -> tuple:
        """The part of every student's cache key that this plan fixes (the code version included)."""
        return (cache_version(), self.task, self.base_kind, tuple(self.expose) if self.use_feats else (),
                json.dumps(self.preset.to_dict(), sort_keys=True), json.dumps(self.budget.to_dict(), sort_keys=True))


def plan_attack(task: str, clean_path: Path, defended_path: Path, kind: str, preset: Preset, seed: int,
                remote=None) -> AttackPlan:
    """Resolve the rung against the defended model's placement; a one-line error when a feature the rung needs
    cannot be found."""
    rung = get_rung(kind)
    placement, feats, expose, cfg = feature_plan(clean_path, defended_path)
    base_kind = rung.base_kind(placement)
    if base_kind == "feature" and any(f.output is None for f in feats):
        what = "tap output" if placement == "tap" else "perturbed replacement tensor"
        raise AsvpError(f"{defended_path}: cannot find the {what} of node(s) "
                        f"{[f.key for f in feats if f.output is None]} needed by the {kind} attack")
    return AttackPlan(task, kind, base_kind, placement, feats, expose, cfg, preset, rung.budget(preset.train), seed,
                      clean_path, defended_path, remote=remote)


def serve(plan: AttackPlan) -> tuple[ServedModel, ServedModel]:
    """The clean and the defended served model, reading the features the plan needs."""
    expose = plan.expose if plan.use_feats else None
    clean = ServedModel(plan.clean_path, expose=expose, read=expose)
    read_def = [f.output for f in plan.feats] if plan.use_feats else None
    if plan.remote is not None:
        return clean, served_defended(plan, read_def)
    if plan.placement == "tap" or not read_def:
        return clean, ServedModel(plan.defended_path, read=read_def)
    return clean, ServedModel(plan.defended_path, expose=read_def, read=read_def)


def served_defended(plan: AttackPlan, read: list[str] | None) -> RemoteServedModel:
    """The defended model as the attacker meets it in production: behind an endpoint, which answers the image and
    the tap outputs it serves, nothing internal (so a feature rung needs tap placement)."""
    if read and plan.placement != "tap":
        raise AsvpError(f"the {plan.kind} attack reads internal tensors of an {plan.placement} model, which a served "
                        "model does not answer: over --url use an output rung, or a tap-placement model")
    return RemoteServedModel(plan.remote, image_io(load_model(plan.defended_path))[1], read)


@dataclass
class StudentSource:
    """What a student learns from: a name (cache key and progress label), the targets and features of the
    training queries, and the targets of the validation queries."""

    name: str
    targets: np.ndarray
    feats: list
    val_targets: np.ndarray


@dataclass
class Answers:
    """The two served models' answers to all the attacker's queries; the first `nt` queries are for training, the
    rest for validation."""

    queries: np.ndarray
    val_queries: np.ndarray | None
    nt: int
    clean: np.ndarray
    clean_feats: list
    defended: np.ndarray
    defended_feats: list
    identical: bool  # the defended model's answers are exactly the clean ones
    meta: list  # per feature: name, spatial size and depth (train_student's feat_meta)

    @property
    def train_queries(self) -> np.ndarray:
        return self.queries[: self.nt]

    def source(self, which: str) -> StudentSource:
        """The training data of the "clean" or the "defended" teacher's students."""
        y, f = (self.clean, self.clean_feats) if which == "clean" else (self.defended, self.defended_feats)
        return StudentSource(which, y[: self.nt], [x[: self.nt] for x in f], y[self.nt:])


def collect_answers(plan: AttackPlan, models: tuple[ServedModel, ServedModel], workdir: Path | None,
                    progress: bool) -> Answers:
    """Query both models (answers cached under workdir/answers) and split the queries (preset.val_frac)."""
    queries = make_queries(plan.task, plan.preset.pool, plan.preset.crop, plan.seed)
    cache = workdir / "answers" if workdir is not None else None
    y_c, f_c = get_answers(models[0], queries, cache, "clean", progress)
    # a served model's answers are never taken from the cache: they are what this run measures
    y_d, f_d = get_answers(models[1], queries, None if plan.remote else cache, "defended", progress)
    train, val_q = split_queries(queries, plan.preset.val_frac)
    identical = bool(np.array_equal(y_c, y_d) and all(np.array_equal(a, b) for a, b in zip(f_c, f_d)))
    meta = [{"name": f.key, "hw": tuple(fc.shape[-2:]), "depth": f.depth} for f, fc in zip(plan.feats, f_c)]
    return Answers(queries, val_q, len(train), y_c, f_c, y_d, f_d, identical, meta)


@dataclass
class HeldOut:
    """The harness's held-out images (never queried), their ground truth, and the two teachers' scores on them."""

    inputs: torch.Tensor
    target: np.ndarray
    clean_out: np.ndarray  # the clean teacher's outputs: what a student's psnr_to_teacher compares with
    teacher: dict


def scores(pred: np.ndarray, target: np.ndarray) -> dict:
    """PSNR and SSIM of predictions against the ground truth (asvp.metrics.psnr_ssim)."""
    p, s = psnr_ssim(pred, target)
    return {"psnr": p, "ssim": s}


def evaluate_teachers(plan: AttackPlan, models: tuple[ServedModel, ServedModel], answers: Answers) -> HeldOut:
    """Both served teachers on the held-out images, and how far apart their answers are."""
    h_in, h_tgt = get_task(plan.task).heldout()
    target = h_tgt.numpy()
    clean_out = models[0].query(h_in.numpy(), 2)[0]
    def_out = models[1].query(h_in.numpy(), 2)[0]
    teacher = {"clean": scores(clean_out, target), "defended": scores(def_out, target),
               "heldout_output_max_abs_diff": float(np.max(np.abs(def_out - clean_out))),
               "query_output_max_abs_diff": float(np.max(np.abs(answers.defended - answers.clean)))}
    return HeldOut(h_in, target, clean_out, teacher)


@dataclass
class Students:
    """Trains (or takes from `store`) the students of one plan: {key: (metrics, record)} shared across calls."""

    plan: AttackPlan
    answers: Answers
    heldout: HeldOut
    store: dict  # or a runtime.attacks.store.StudentStore
    progress: bool = True

    def train(self, src: StudentSource, seed: int) -> tuple[dict, dict]:
        """Train one student on `src` and score it on the held-out images (and its validation curve)."""
        plan, a, use = self.plan, self.answers, self.plan.use_feats
        fs = [f.astype(np.float32) for f in src.feats]
        m, rec = train_student(plan.task, a.train_queries, src.targets, seed=seed, budget=plan.budget,
                               feats=fs if use else None, feat_meta=a.meta if use else None,
                               desc=f"{plan.task} student<-{src.name}", progress=self.progress,
                               val=(a.val_queries, src.val_targets) if a.val_queries is not None else None,
                               device=plan.preset.device)
        pred = predict(m, self.heldout.inputs, device=plan.preset.device)
        met = {**scores(pred, self.heldout.target),
               "psnr_to_teacher": pooled_psnr(pred, self.heldout.clean_out, clip=True)}
        if "val_curve" in rec:
            met["plateau"] = plateau(rec["val_curve"])
            met["val_l1_final"] = rec["val_curve"][-1][1] if rec["val_curve"] else None
        return met, rec

    def clean(self, seed: int) -> tuple[dict, dict]:
        key = self.plan.student_key() + ("clean", self.plan.digests["clean"], seed)
        if key not in self.store:
            self.store[key] = self.train(self.answers.source("clean"), seed)
        return self.store[key]

    def defended(self, src: StudentSource, seed: int) -> tuple[dict, dict]:
        """A student of the defended teacher (or of the attacker's clean-up of its answers, src.name)."""
        if self.answers.identical and src.name == "defended":  # the answers are the clean ones: the same student
            return self.clean(seed)
        key = self.plan.student_key() + (src.name, self.plan.digests["defended"], seed)
        if key not in self.store:
            self.store[key] = self.train(src, seed)
        return self.store[key]


def adaptive_source(plan: AttackPlan, answers: Answers) -> tuple[StudentSource, dict]:
    """What the adaptive student learns from, and what the attacker's clean-up achieved (report data): tap
    placement inverts ASVP on the received features, inline placement filters the received outputs."""
    defended, nt = answers.source("defended"), answers.nt
    clean = answers.source("clean")
    if plan.placement == "tap":
        known = plan.config or AsvpConfig()
        inv = [invert_asvp(f.astype(np.float32), known) for f in defended.feats]
        f_a = [r for r, _ in inv]
        report = {"inversion": {
            "config_known": plan.config is not None, "config": known.to_dict(),
            "per_feature": [{"tensor": ft.key,
                             "rel_err_received": rel_err(fd.astype(np.float32), fc.astype(np.float32)),
                             "rel_err_inverted": rel_err(fa, fc.astype(np.float32)),
                             "k_used_mean": float(np.mean(ks))}
                            for ft, fd, fa, fc, (_, ks) in zip(plan.feats, defended.feats, f_a, clean.feats, inv)]}}
        return StudentSource("defended+inverted", defended.targets, f_a, defended.val_targets), report
    y_a = filter_outputs(plan.task, answers.defended, answers.queries)
    scale = get_task(plan.task).scale
    report = {"filter": {"rel_err_received": rel_err(defended.targets, clean.targets),
                         "rel_err_filtered": rel_err(y_a[:nt], clean.targets),
                         "method": "back-projection x3" if scale > 1 else "residual Gaussian sigma 0.7"}}
    return StudentSource("defended+filtered", y_a[:nt], defended.feats, y_a[nt:]), report


def noise_students(students: Students, first: dict) -> tuple[list[dict], float | None]:
    """preset.noise_seeds extra clean students (seeds seed+1, ...) and the PSNR range over all clean students."""
    seed, n = students.plan.seed, students.plan.preset.noise_seeds
    if not n:
        return [], None
    others = [students.clean(seed + i)[0] for i in range(1, n + 1)]
    psnrs = [first["psnr"]] + [o["psnr"] for o in others]
    return others, max(psnrs) - min(psnrs)


def paired_students(students: Students, first: dict, seeds: int, adaptive: StudentSource | None,
                    interval: str) -> dict:
    """A clean and a defended (and adaptive) student per seed, same queries, and the paired drops."""
    seed = students.plan.seed
    per_seed = [{"seed": seed, **first}]
    for s in range(seed + 1, seed + seeds):
        one = {"seed": s, "clean": students.clean(s)[0],
               "defended": students.defended(students.answers.source("defended"), s)[0]}
        if adaptive is not None:
            one["adaptive"] = students.defended(adaptive, s)[0]
        per_seed.append(one)
    clean = [p["clean"]["psnr"] for p in per_seed]
    paired = {"seeds": [p["seed"] for p in per_seed], "per_seed": per_seed,
              "student": paired_drop(clean, [p["defended"]["psnr"] for p in per_seed], interval=interval).to_dict()}
    if adaptive is not None:
        paired["student_adaptive"] = paired_drop(clean, [p["adaptive"]["psnr"] for p in per_seed],
                                                 interval=interval).to_dict()
    return paired
