"""Distilled students: smaller versions of each task's teacher architecture, and their training. The attacker
(runtime.attacks) trains them on a served model's answers; the owner's fingerprint (runtime.fingerprint) trains
reference students of the clean teacher the same way, which is why they live below both.

A student never sees ground truth: it learns only from what the attacker received from the served model
(outputs, and for feature attacks the exposed feature maps). Every student is the task's own architecture
with about half the channels (and, where the architecture has a depth knob, fewer blocks):

    sr          EDSRLite(ch 32 -> 16, blocks 4 -> 2)              x2 pixel-shuffle, bicubic skip
    lowlight    UNetLite(ch 24 -> 12)                              two-level U-Net
    underwater  ResidualCNN(ch 32 -> 16, blocks 3 -> 2)
    dehaze      AODNetWide(ch 16 -> 8)
    derain      DilatedDerainNet(ch 32 -> 16, dilations 1,2,4,2,1 -> 1,2,4)

Feature ("hint") distillation follows FitNets: each exposed teacher feature is matched, through a learned
1x1 convolution (adapter), by the student feature at the same spatial resolution and the nearest relative
depth. Hint losses are L1 normalised by the mean |feature| the attacker received, so the weight `hint_weight`
means the same thing for every layer and task.

Two variants of the recipe (the attacker ladder's rungs, runtime/attacks/recipes.RUNGS):
  * no adapter (`TrainBudget.adapter=False`): the student layer is aligned to the teacher feature directly, which
    needs the same width there: these runs use WIDE_STUDENTS, the task's architecture at the teacher's width with
    the student's depth (lowlight and dehaze have no depth knob: their width-matched student is the teacher's
    architecture);
  * feature stage first (`TrainBudget.feature_stage=f`): the first f x steps minimise the hint loss only, the
    rest the output loss only (one optimizer and one-cycle schedule over all steps).
And the ladder's `larger` rung (`TrainBudget.student="larger"`): a student with the teacher's own architecture and
width (LARGER_STUDENTS, 4-6x the default student's parameters), distilled from the outputs.

Convergence: given a validation split (`val`: held-out queries and the answers to them, never trained on),
train_student records the validation L1 to the served model's answers at VAL_POINTS evenly spaced steps
(record["val_curve"]); runtime.evaluation.stats.plateau says whether it has flattened.
Device: students train and predict on `device` ("cpu", "cuda", or "auto" = CUDA when torch sees one); the
queries and answers stay on the host and batches move to the device.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from asvp.errors import AsvpError
from asvp.tasks import get_task
from asvp.tasks.architectures import ARCHITECTURES, ResBlock

STUDENTS: dict[str, tuple[str, dict]] = {
    "sr": ("EDSRLite", {"scale": 2, "ch": 16, "blocks": 2}),
    "lowlight": ("UNetLite", {"ch": 12}),
    "underwater": ("ResidualCNN", {"ch": 16, "blocks": 2}),
    "dehaze": ("AODNetWide", {"ch": 8}),
    "derain": ("DilatedDerainNet", {"ch": 16, "dilations": (1, 2, 4)}),
}


# Width-matched students (same width as the teacher, the student's depth): feature alignment without an adapter.
WIDE_STUDENTS: dict[str, tuple[str, dict]] = {
    "sr": ("EDSRLite", {"scale": 2, "ch": 32, "blocks": 2}),
    "lowlight": ("UNetLite", {"ch": 24}),
    "underwater": ("ResidualCNN", {"ch": 32, "blocks": 2}),
    "dehaze": ("AODNetWide", {"ch": 16}),
    "derain": ("DilatedDerainNet", {"ch": 32, "dilations": (1, 2, 4)}),
}


# The ladder's `larger` rung: the teacher's own architecture and width (filled from the task specs).
def larger_student(task: str) -> tuple[str, dict]:
    spec = get_task(task)
    return spec.arch, dict(spec.arch_kwargs)


SIZES = ("default", "wide", "larger")
VAL_POINTS = 10  # validation evaluations per training run (when a validation split is given)


def resolve_device(device: str | None) -> torch.device:
    """"cpu", "cuda" (error when torch sees no GPU) or "auto"/None (CUDA when available, else CPU)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise AsvpError(f"unknown device {device!r}; choose cpu, cuda or auto")
    if device == "cuda" and not torch.cuda.is_available():
        raise AsvpError("device cuda requested but torch sees no CUDA device")
    return torch.device(device)


@dataclass(frozen=True)
class TrainBudget:
    steps: int = 300
    batch: int = 8
    lr: float = 2e-3
    hint_weight: float = 0.1
    adapter: bool = True  # False: align student layers to teacher features directly (a width-matched student)
    feature_stage: float = 0.0  # share of the steps trained on the hint loss alone, before the output stage
    student: str = "default"  # "larger": the teacher's architecture and width (the ladder's `larger` rung)

    def to_dict(self) -> dict:
        d = asdict(self)
        # The recipe variants are recorded only when used, so the budgets (and cache keys) of the original
        # recipe stay what they were.
        if d["adapter"]:
            del d["adapter"]
        if not d["feature_stage"]:
            del d["feature_stage"]
        if d["student"] == "default":
            del d["student"]
        return d

    @property
    def size(self) -> str:
        """Which student: "larger" (asked for), "wide" (no adapter: width-matched) or "default"."""
        return "larger" if self.student == "larger" else "wide" if not self.adapter else "default"


def _student_spec(task: str, size) -> tuple[str, dict]:
    size = "wide" if size is True else "default" if size is False else size
    if size not in SIZES:
        raise AsvpError(f"unknown student size {size!r}; choose one of: {', '.join(SIZES)}")
    name = get_task(task).name
    return larger_student(name) if size == "larger" else (WIDE_STUDENTS if size == "wide" else STUDENTS)[name]


def build_student(task: str, seed: int, wide: bool | str = False) -> nn.Module:
    """The task's student (wide=True or "wide": the width-matched one; "larger": the teacher's architecture and
    width), initialised from `seed` (identical weights for every teacher it is distilled from)."""
    arch, kwargs = _student_spec(task, wide)
    torch.manual_seed(seed)
    return ARCHITECTURES[arch](**kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_student(task: str, wide: bool | str = False) -> dict:
    spec = get_task(task)
    arch, kwargs = _student_spec(task, wide)
    return {"arch": arch, "kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
            "params": n_params(build_student(task, 0, wide)), "teacher_arch": spec.arch,
            "teacher_kwargs": spec.arch_kwargs, "teacher_params": n_params(spec.build())}


# ---- hint points --------------------------------------------------------------------------------------------

HINT_MODULES = (nn.Conv2d, nn.ConvTranspose2d, ResBlock)


def student_points(model: nn.Module, in_shape: tuple) -> list[tuple[str, tuple]]:
    """Candidate hint points, in call order: (module name, output shape) of convs and residual blocks."""
    names = {m: n for n, m in model.named_modules()}
    seen: list[tuple[str, tuple]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append((names[mod], tuple(o.shape))))
             for m in model.modules() if isinstance(m, HINT_MODULES)]
    try:
        with torch.no_grad():
            model(torch.zeros(in_shape))
    finally:
        for h in hooks:
            h.remove()
    out, used = [], set()
    for name, shape in seen:  # a module called twice keeps its first call
        if name not in used and len(shape) == 4 and shape[1] >= 4:
            used.add(name)
            out.append((name, shape))
    return out


def padded_of(student_hw: tuple, teacher_hw: tuple) -> bool:
    """The teacher's feature is the student's size padded at the bottom/right (less than doubled), as in a model
    that pads its input to a multiple inside (asvp nodes labels it ceil(H/8)*8)."""
    return all(s <= t < 2 * s for s, t in zip(student_hw, teacher_hw))


def match_hints(model: nn.Module, in_shape: tuple, teacher_feats: list[dict], same_width: bool = False) -> list[str]:
    """For each teacher feature {shape (H, W of a query), depth in [0, 1]}, the student point to align.

    Same spatial size is required (or the teacher's is the student's padded: padded_of; training then crops the
    teacher feature to the student's size), and the student's full width at that size (so a narrow output projection,
    e.g. the conv before a pixel shuffle, is never forced to carry trunk features); among those, the nearest
    relative depth wins. same_width (no adapter): only points whose channel count is the teacher feature's
    (tf["channels"]).
    """
    points = student_points(model, in_shape)
    chosen = []
    for tf in teacher_feats:
        same = [(i, n, s[1]) for i, (n, s) in enumerate(points) if tuple(s[-2:]) == tuple(tf["hw"])]
        if not same:  # a teacher that pads inside (ceil(H/8)*8): the student's size is its top-left corner
            same = [(i, n, s[1]) for i, (n, s) in enumerate(points) if padded_of(tuple(s[-2:]), tuple(tf["hw"]))]
        if same_width:
            widths = sorted({c for _, _, c in same})
            same = [p for p in same if p[2] == tf["channels"]]
            if not same:
                raise AsvpError(f"direct alignment without an adapter needs a student layer with {tf['channels']} "
                                 f"channels at spatial size {tuple(tf['hw'])} for teacher feature {tf['name']}; "
                                 f"the width-matched student has {widths or 'no layer of that size'}")
        widest = max((c for _, _, c in same), default=0)
        same = [(i, n) for i, n, c in same if c == widest]
        if not same:
            raise AsvpError(f"no student layer has the spatial size {tuple(tf['hw'])} of teacher feature {tf['name']}")
        depth = lambda i: i / max(len(points) - 1, 1)  # noqa: E731
        chosen.append(min(same, key=lambda p: abs(depth(p[0]) - tf["depth"]))[1])
    return chosen


class _Capture:
    def __init__(self, model: nn.Module, names: list[str]):
        mods = dict(model.named_modules())
        self.store: dict[str, torch.Tensor] = {}
        self.hooks = [mods[n].register_forward_hook(self._hook(n)) for n in dict.fromkeys(names)]

    def _hook(self, name):
        def fn(mod, inp, out):
            self.store.setdefault(name, out)
        return fn

    def close(self):
        for h in self.hooks:
            h.remove()


# ---- training ------------------------------------------------------------------------------------------------

def train_student(task: str, inputs: np.ndarray, targets: np.ndarray, *, seed: int, budget: TrainBudget,
                  feats: list[np.ndarray] | None = None, feat_meta: list[dict] | None = None,
                  desc: str = "student", progress: bool = True, val: tuple | None = None,
                  device: str | None = "cpu") -> tuple[nn.Module, dict]:
    # budget.adapter False: the width-matched student (WIDE_STUDENTS) and no adapters;
    # budget.feature_stage f > 0: hint loss alone for the first f x steps, then the output loss alone.
    """Train a fresh student on (query, answer) pairs; returns (model in eval mode, training record).

    inputs [P,3,h,w] float32, targets [P,3,sh,sw]; feats (optional): one array [P,C,fh,fw] per exposed teacher
    feature, with feat_meta[i] = {name, hw, depth} (hw: the feature's spatial size for these queries).
    Same seed -> same initial weights, same batch order: students of clean and defended teachers differ only
    in the answers they learn from. val: (inputs, targets) of held-out queries: the validation L1 is recorded
    at VAL_POINTS steps (record["val_curve"], [[step, loss], ...]). The model is returned on the CPU.
    """
    wide = not budget.adapter
    dev = resolve_device(device)
    student = build_student(task, seed, budget.size).train()
    params = list(student.parameters())
    hint_names, adapters, scales = [], nn.ModuleList(), []
    if feats:
        in_shape = (1,) + tuple(inputs.shape[1:])
        meta = [{**m, "channels": f.shape[1]} for m, f in zip(feat_meta, feats)]
        hint_names = match_hints(student, in_shape, meta, same_width=wide)
        points = dict(student_points(student, in_shape))
        feats = [f[..., :points[n][2], :points[n][3]] for n, f in zip(hint_names, feats)]  # padded teachers' crop
        torch.manual_seed(seed + 7919)
        for name, f in zip(hint_names, feats):
            adapters.append(nn.Conv2d(points[name][1], f.shape[1], 1) if budget.adapter else nn.Identity())
            scales.append(float(np.mean(np.abs(f.astype(np.float32)))) + 1e-8)
        params += list(adapters.parameters())
    student.to(dev)
    adapters.to(dev)
    opt = torch.optim.Adam(params, lr=budget.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(inputs), torch.from_numpy(targets)
    f_all = [torch.from_numpy(f) for f in (feats or [])]
    cap = _Capture(student, hint_names) if hint_names else None
    bar = tqdm(range(budget.steps), desc=desc, disable=not progress, leave=False)
    feature_steps = int(round(budget.feature_stage * budget.steps)) if cap else 0
    last = {}
    checks = sorted({max(1, round(budget.steps * (i + 1) / VAL_POINTS)) for i in range(VAL_POINTS)}) if val else []
    curve = []
    try:
        for step in bar:
            idx = torch.randint(len(x_all), (budget.batch,), generator=g)
            if cap:
                cap.store.clear()
            out = student(x_all[idx].to(dev))
            loss_out = F.l1_loss(out, y_all[idx].to(dev))
            loss = loss_out
            hint = torch.zeros(())
            if cap:
                for name, ad, fa, sc in zip(hint_names, adapters, f_all, scales):
                    hint = hint + F.l1_loss(ad(cap.store[name]), fa[idx].to(dev).float()) / sc
                if step < feature_steps:  # feature stage: the hints alone
                    loss = hint
                elif feature_steps:  # output stage of a staged recipe: the outputs alone
                    loss = loss_out
                else:
                    loss = loss + budget.hint_weight * hint
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            last = {"l1": loss_out.item(), "hint": hint.item()}
            bar.set_postfix(l1=f"{last['l1']:.4f}", **({"hint": f"{last['hint']:.3f}"} if cap else {}))
            if checks and step + 1 == checks[0]:
                checks.pop(0)
                if cap:
                    cap.store.clear()
                student.eval()
                curve.append([step + 1, val_loss(student, *val)])
                student.train()
    finally:
        if cap:
            cap.close()
    record = {"student": describe_student(task, budget.size), "budget": budget.to_dict(), "seed": seed,
              "hint_layers": [{"teacher": m["name"], "student": n} for m, n in zip(feat_meta or [], hint_names)],
              "final_loss": last, "device": dev.type}
    if val:
        record["val_curve"] = curve
        record["val_queries"] = int(len(val[0]))
    return student.cpu().eval(), record


@torch.no_grad()
def val_loss(model: nn.Module, inputs: np.ndarray, targets: np.ndarray, chunk: int = 16) -> float:
    """Mean L1 between the model's outputs and the answers on held-out queries."""
    dev = next(model.parameters()).device
    tot, n = 0.0, 0
    for i in range(0, len(inputs), chunk):
        x = torch.from_numpy(np.ascontiguousarray(inputs[i : i + chunk])).to(dev)
        y = torch.from_numpy(np.ascontiguousarray(targets[i : i + chunk])).to(dev)
        tot += float(F.l1_loss(model(x), y, reduction="sum"))
        n += y.numel()
    return tot / max(n, 1)


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, chunk: int = 2, device: str | None = "cpu") -> np.ndarray:
    """The model's outputs for `inputs`, in chunks, on `device` (returned as a host array)."""
    dev = resolve_device(device)
    model = model.to(dev)
    return torch.cat([model(inputs[i : i + chunk].to(dev)).cpu() for i in range(0, len(inputs), chunk)]).numpy()
