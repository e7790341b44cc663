"""The five restoration tasks of the paper: one home for what a task *is*, shared by every layer above.

A task names its architecture family (asvp.tasks.architectures), its synthetic degradation
(asvp.tasks.degradations), its trivial baseline and its geometry (scale, size multiple); asvp.tasks.data holds
the bundled clean images. Where a task's trained teacher weights live is the exporter's business
(asvp.exporter.teachers.bundled).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from asvp.constants import TASK_NAMES
from asvp.errors import AsvpError
from asvp.tasks import degradations
from asvp.tasks.architectures import ARCHITECTURES
from asvp.tasks.data import heldout_crops

HELDOUT_SEED = 1234


@dataclass(frozen=True)
class TaskSpec:
    name: str
    title: str
    arch: str
    degrade: Callable[[torch.Tensor, torch.Generator], torch.Tensor]
    scale: int = 1
    arch_kwargs: dict = field(default_factory=dict)
    baseline: str = "identity"  # what "doing nothing" means for this task
    size_multiple: int = 1  # input H and W must be multiples of this

    @property
    def teacher_name(self) -> str:
        return f"{self.name}-{self.arch.lower()}"

    def build(self) -> nn.Module:
        return ARCHITECTURES[self.arch](**self.arch_kwargs)

    def make_pair(self, clean: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(degraded input, clean target) from a clean batch."""
        return self.degrade(clean, g), clean

    def baseline_output(self, inp: torch.Tensor) -> torch.Tensor:
        if self.baseline == "bicubic":
            return F.interpolate(inp, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)
        return inp

    def heldout(self, size: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out (input, target) pairs from images never used in training, with a fixed degradation seed."""
        clean = heldout_crops(size)
        g = torch.Generator().manual_seed(HELDOUT_SEED)
        return self.make_pair(clean, g)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("sr", "Super-resolution x2", "EDSRLite", degradations.bicubic_down, scale=2,
                 arch_kwargs={"scale": 2, "ch": 32, "blocks": 4}, baseline="bicubic"),
        TaskSpec("lowlight", "Low-light enhancement", "UNetLite", degradations.low_light,
                 arch_kwargs={"ch": 24}, size_multiple=4),
        TaskSpec("underwater", "Underwater enhancement", "ResidualCNN", degradations.underwater,
                 arch_kwargs={"ch": 32, "blocks": 3}),
        TaskSpec("dehaze", "Dehazing", "AODNetWide", degradations.haze, arch_kwargs={"ch": 16}),
        TaskSpec("derain", "Deraining", "DilatedDerainNet", degradations.rain, arch_kwargs={"ch": 32}),
    )
}
if tuple(TASKS) != TASK_NAMES:  # the list the CLI shows without importing torch
    raise RuntimeError(f"asvp.constants.TASK_NAMES {TASK_NAMES} does not match the task specs {tuple(TASKS)}")


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise AsvpError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None
