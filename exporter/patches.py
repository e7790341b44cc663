"""Export-time patches for known architectures whose code bakes the batch size into a traced graph.

Windowed transformers (SwinIR, HAT, DRCT, Swin2SR: `window_reverse`; DAT, RGT: `windows2img`) compute the batch
as a Python number, `int(windows.shape[0] / (H * W / ws / ws))`, so both of torch's exporters record the traced
batch as a constant and the ONNX model only takes that batch. The replacements below compute the same tensor
with -1 for the batch (as exporters in the field do), which the tracer keeps symbolic.

A patch swaps module-level functions of the architecture's own module for the duration of the trace (the model's
classes look them up by name at call time) and restores them afterwards, even on failure. The parity checks run
the unpatched torch model, so a patch that computed anything else would fail them. The exported model records
the patch it used in its asvp.export_patch metadata.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch


def window_reverse(windows: torch.Tensor, window_size: int, H: int, W: int) -> torch.Tensor:
    """Swin's window_reverse (num_windows*B, ws, ws, C) -> (B, H, W, C), with -1 for the batch."""
    c = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, c)


def windows2img(img_splits_hw: torch.Tensor, H_sp: int, W_sp: int, H: int, W: int) -> torch.Tensor:
    """DAT's and RGT's windows2img (num_windows*B, H_sp*W_sp, C) -> (B, H, W, C), with -1 for the batch."""
    c = img_splits_hw.shape[-1]
    img = img_splits_hw.view(-1, H // H_sp, W // W_sp, H_sp, W_sp, c)
    return img.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, H, W, c)


@dataclass(frozen=True)
class ExportPatch:
    """Functions of one architecture's module replaced while it is traced."""

    architecture: str
    module: str  # the module whose functions are swapped (and whose classes mark a model as this architecture)
    functions: dict = field(default_factory=dict)  # function name -> replacement: Callable

    @property
    def name(self) -> str:
        """What the exported model's asvp.export_patch records, e.g. "SwinIR.window_reverse"."""
        return ",".join(f"{self.architecture}.{f}" for f in self.functions)


_SPANDREL = "spandrel.architectures."
PATCHES = (  # the one registry: architecture -> patch
    ExportPatch("SwinIR", _SPANDREL + "SwinIR.__arch.SwinIR", {"window_reverse": window_reverse}),
    ExportPatch("HAT", _SPANDREL + "HAT.__arch.HAT", {"window_reverse": window_reverse}),
    ExportPatch("DRCT", _SPANDREL + "DRCT.__arch.drct_arch", {"window_reverse": window_reverse}),
    ExportPatch("Swin2SR", _SPANDREL + "Swin2SR.__arch.Swin2SR", {"window_reverse": window_reverse}),
    ExportPatch("DAT", _SPANDREL + "DAT.__arch.DAT", {"windows2img": windows2img}),
    ExportPatch("RGT", _SPANDREL + "RGT.__arch.rgt", {"windows2img": windows2img}),
)


def patches_for(model: torch.nn.Module) -> list[ExportPatch]:
    """The registered patches whose module defines one of the model's layers (none for other models)."""
    modules = {type(m).__module__ for m in model.modules()}
    return [p for p in PATCHES if p.module in modules]


@contextlib.contextmanager
def patched(patches: list[ExportPatch]) -> Iterator[None]:
    """Swap in the patches' functions; the originals are back when the block ends, whatever happens in it."""
    saved: list[tuple[object, str, Callable]] = []
    try:
        for p in patches:
            module = sys.modules.get(p.module) or importlib.import_module(p.module)
            for fname, replacement in p.functions.items():
                saved.append((module, fname, getattr(module, fname)))
                setattr(module, fname, replacement)
        yield
    finally:
        for module, fname, original in reversed(saved):
            setattr(module, fname, original)
