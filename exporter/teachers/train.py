"""Train and evaluate the bundled teachers (`asvp train-teacher`, `asvp eval-teachers`)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from asvp.constants import TEACHER_TRAIN as DEFAULTS
from asvp.exporter.teachers.bundled import load_teacher, weights_path
from asvp.io import atomic_output, write_text_atomic
from asvp.metrics import psnr_ssim
from asvp.tasks import TASKS, get_task
from asvp.tasks.data import TRAIN_IMAGES, random_crops


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: str) -> dict:
    """Held-out PSNR/SSIM of a model and of the task's trivial baseline (bicubic for SR, identity otherwise)."""
    spec = get_task(task)
    inp, target = spec.heldout()
    pred = model.eval()(inp)
    m_psnr, m_ssim = psnr_ssim(pred.numpy(), target.numpy())
    b_psnr, b_ssim = psnr_ssim(spec.baseline_output(inp).numpy(), target.numpy())
    return {"psnr": m_psnr, "ssim": m_ssim, "baseline": spec.baseline, "baseline_psnr": b_psnr, "baseline_ssim": b_ssim}


def train_teacher(task: str, steps: int = DEFAULTS["steps"], batch: int = DEFAULTS["batch"],
                  patch: int = DEFAULTS["patch"], lr: float = DEFAULTS["lr"], seed: int = DEFAULTS["seed"],
                  out=None, progress: bool = True) -> dict:
    """Train a task's teacher from its seed on bundled images; write weights (+ a JSON record) atomically."""
    spec = get_task(task)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = spec.build().train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = time.time()
    bar = tqdm(range(steps), desc=f"train {task}", disable=not progress)
    for _ in bar:
        inp, target = spec.make_pair(random_crops(TRAIN_IMAGES, batch, patch, g), g)
        loss = F.l1_loss(model(inp), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(l1=f"{loss.item():.4f}")
    record = {
        "task": task, "teacher": spec.teacher_name, "arch": spec.arch, "arch_kwargs": spec.arch_kwargs,
        "params": sum(p.numel() for p in model.parameters()),
        "train": {"steps": steps, "batch": batch, "patch": patch, "lr": lr, "seed": seed,
                  "images": list(TRAIN_IMAGES), "seconds": round(time.time() - start, 1)},
        "heldout": evaluate(model, task),
        "command": f"asvp train-teacher --task {task} --steps {steps} --seed {seed}",
    }
    path = weights_path(task) if out is None else Path(out)
    with atomic_output(path) as tmp:
        torch.save(model.state_dict(), tmp)
    write_text_atomic(path.with_suffix(".json"), json.dumps(record, indent=2) + "\n")
    return record


def record_summary(rec: dict) -> str:
    """One line for people from a training record (train_teacher's return value)."""
    h = rec["heldout"]
    return (f"{rec['teacher']}: held-out PSNR {h['psnr']:.2f} dB (baseline {h['baseline']} {h['baseline_psnr']:.2f} dB), "
            f"SSIM {h['ssim']:.4f} (baseline {h['baseline_ssim']:.4f})")


def quality_table(tasks=None) -> list[dict]:
    """Re-evaluate the bundled teachers on the held-out split (not read from the training records)."""
    rows = []
    for task in tasks or TASKS:
        model, spec = load_teacher(task)
        rows.append({"task": task, "teacher": spec.teacher_name, **evaluate(model, task)})
    return rows


def quality_markdown(rows: list[dict]) -> str:
    lines = ["| task | teacher | PSNR (dB) | SSIM | baseline | baseline PSNR | baseline SSIM | PSNR gain |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['teacher']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['baseline']} | "
                     f"{r['baseline_psnr']:.2f} | {r['baseline_ssim']:.4f} | {r['psnr'] - r['baseline_psnr']:+.2f} |")
    return "\n".join(lines) + "\n"
