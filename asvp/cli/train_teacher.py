"""`asvp train-teacher`: train a bundled teacher from a fixed seed and overwrite its bundled weights."""
from __future__ import annotations

from asvp.cli.args import OutputArgs, TaskArgs
from asvp.constants import TEACHER_TRAIN


def register(sub) -> None:
    s = sub.add_parser("train-teacher", help="train a bundled teacher on scikit-image's images (reproducible)",
                       description="Train the task's teacher from a fixed seed and overwrite its bundled weights.")
    TaskArgs(required=True).add(s)
    s.add_argument("--steps", type=int, default=TEACHER_TRAIN["steps"],
                   help=f"optimizer steps (default {TEACHER_TRAIN['steps']})")
    s.add_argument("--seed", type=int, default=TEACHER_TRAIN["seed"], help=f"(default {TEACHER_TRAIN['seed']})")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api
    from asvp.exporter.teachers.train import record_summary

    print(record_summary(api.train_teacher(TaskArgs.parse(a), steps=a.steps, seed=a.seed,
                                           progress=OutputArgs.progress(a))))
