"""Load a user's `.pth` of a public restoration architecture through spandrel (architecture auto-detected).

spandrel imports torchvision eagerly for two architectures asvp does not serve (LaMa inpainting and
RestoreFormer face restoration). torchvision's PyPI wheels are CUDA-linked and cannot load beside a CPU
build of torch (`operator torchvision::nms does not exist`). When that happens we register a stand-in for
the three torchvision functions those two architectures name; calling any of them raises a clear error,
so nothing silently computes wrong results. With a working torchvision nothing is replaced.
"""
from __future__ import annotations

import sys
import types
import warnings
from pathlib import Path

from asvp.errors import AsvpError, MissingDependencyError, detail_line


def _torchvision_works() -> bool:
    try:
        import torchvision.transforms.functional  # noqa: F401

        return True
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def _install_torchvision_standin() -> None:
    def unavailable(*_a, **_k):
        raise MissingDependencyError(
            "this spandrel architecture needs a working torchvision, which is not importable beside this torch build")

    class InterpolationMode:  # the enum's names, as spandrel's LaMa references them at import time
        NEAREST, BILINEAR, BICUBIC = "nearest", "bilinear", "bicubic"

    tv = types.ModuleType("torchvision")
    tv.__asvp_standin__ = True
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = InterpolationMode
    functional.rotate = functional.normalize = unavailable
    tv.transforms, transforms.functional = transforms, functional
    sys.modules.update({"torchvision": tv, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def import_spandrel():
    if "spandrel" not in sys.modules and not _torchvision_works():
        _install_torchvision_standin()
    try:
        import spandrel
    except ImportError as exc:
        raise MissingDependencyError(f"spandrel is not installed ({exc}); pip install 'spandrel>=0.4,<0.5'") from None
    return spandrel


def load_spandrel_model(path: str | Path, with_sizes: bool = False):
    """Return (torch module in eval mode, scale, architecture name) for a spandrel-supported checkpoint; with
    with_sizes, also spandrel's size requirements as (minimum side, multiple of, square only)."""
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
    if desc.input_channels != 3 or desc.output_channels != 3:
        raise AsvpError(f"{path}: asvp serves RGB-to-RGB models; this one maps {desc.input_channels} -> {desc.output_channels} channels")
    if with_sizes:
        req = desc.size_requirements
        sizes = (int(req.minimum), int(req.multiple_of), bool(req.square))
        return desc.model.eval(), int(desc.scale), desc.architecture.name, sizes
    return desc.model.eval(), int(desc.scale), desc.architecture.name
