"""The bundled, trained teachers: one weights file (and its training record) per task, shipped with asvp."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from asvp.errors import AsvpError
from asvp.tasks import TaskSpec, get_task

WEIGHTS_DIR = Path(__file__).parent / "weights"


def weights_path(task: str) -> Path:
    """Where the task's bundled teacher weights live (present or not)."""
    return WEIGHTS_DIR / f"{get_task(task).name}.pt"


def has_weights(task: str) -> bool:
    return weights_path(task).exists()


def load_teacher(task: str) -> tuple[nn.Module, TaskSpec]:
    """The bundled, trained teacher for a task, in eval mode."""
    spec = get_task(task)
    path = weights_path(task)
    if not path.exists():
        raise AsvpError(f"no bundled weights for task {task!r} at {path}; run `asvp train-teacher --task {task}`")
    model = spec.build()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), spec


def teacher_record(task: str) -> dict:
    """The training record saved beside the weights (settings and held-out quality)."""
    path = weights_path(task).with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else {}
