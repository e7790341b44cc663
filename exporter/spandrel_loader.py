"""Load a user's `.pth` of a public restoration architecture through spandrel (architecture auto-detected).

spandrel imports torchvision eagerly for two architectures asvp does not serve (LaMa inpainting and
RestoreFormer face restoration). torchvision's PyPI wheels are CUDA-linked and cannot load beside a CPU
build of torch (`operator torchvision::nms does not exist`). When that happens we register a stand-in for
the three torchvision functions those two architectures name; calling any of them raises a clear error,
so nothing silently computes wrong results. With a working torchvision nothing is replaced.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from asvp.errors import AsvpError, MissingDependencyError, detail_line
from asvp.standins import torchvision_standin


class InterpolationMode:  # the enum's names, as spandrel's LaMa references them at import time
    NEAREST, BILINEAR, BICUBIC = "nearest", "bilinear", "bicubic"


def import_spandrel():
    if "spandrel" not in sys.modules:
        torchvision_standin("torchvision.transforms.functional",
                            {"torchvision": {}, "torchvision.transforms": {},
                             "torchvision.transforms.functional": {"InterpolationMode": InterpolationMode,
                                                                   "rotate": None, "normalize": None}},
                            "this spandrel architecture needs a working torchvision, which is not importable beside "
                            "this torch build")
    try:
        import spandrel
    except ImportError as exc:
        raise MissingDependencyError(f"spandrel is not installed ({exc}); pip install 'spandrel>=0.4,<0.5'") from None
    return spandrel


@dataclass
class SpandrelModel:
    """A spandrel checkpoint's model (eval mode) and what spandrel says about it."""

    model: object  # torch.nn.Module
    scale: int
    architecture: str
    minimum: int  # spandrel's size requirements: smallest side, multiple of, square only
    multiple: int
    square: bool
    in_channels: int
    out_channels: int


def load_spandrel(path: str | Path) -> SpandrelModel:
    """Load a spandrel-supported single-image restoration checkpoint (any channel counts: grey, RGB, more)."""
    spandrel = import_spandrel()
    try:
        with warnings.catch_warnings():  # architectures' own deprecation chatter (torch.meshgrid, ...)
            warnings.simplefilter("ignore")
            desc = spandrel.ModelLoader(device="cpu").load_from_file(str(path))
    except spandrel.UnsupportedModelError:
        raise AsvpError(f"{path}: spandrel does not recognise this checkpoint's architecture") from None
    except Exception as exc:
        raise AsvpError(f"{path}: could not load with spandrel ({type(exc).__name__}: {detail_line(exc)})") from None
    if not isinstance(desc, spandrel.ImageModelDescriptor):
        raise AsvpError(f"{path}: {desc.architecture.name} is not a single-image restoration model")
    req = desc.size_requirements
    return SpandrelModel(desc.model.eval(), int(desc.scale), desc.architecture.name, int(req.minimum),
                         int(req.multiple_of), bool(req.square), int(desc.input_channels), int(desc.output_channels))

