"""Stand-ins for torchvision where its PyPI wheel cannot load.

torchvision's PyPI wheels are CUDA-linked and cannot load beside a CPU build of torch (`operator torchvision::nms
does not exist`), yet two libraries asvp uses import it eagerly for parts asvp never runs: spandrel (two
architectures asvp does not serve) and onnx2torch (the NMS and RoiAlign converters). Where the real module cannot
be imported, its broken remains are dropped and stand-in modules are registered whose functions raise one clear
MissingDependencyError, so nothing silently computes a wrong result. A working torchvision is never replaced, and
a stand-in registered for one library is kept and extended for the other.
"""
from __future__ import annotations

import importlib
import sys
import types

from asvp.errors import MissingDependencyError

STANDIN = "__asvp_standin__"  # set on every stand-in module


def torchvision_standin(probe: str, members: dict[str, dict], why: str) -> None:
    """If `import probe` fails, register stand-ins: `members` maps module names (parents first) to their attributes;
    an attribute whose value is None becomes a function raising MissingDependencyError(why)."""
    try:
        importlib.import_module(probe)
        return
    except Exception:
        for name in [m for m in sys.modules if (m == "torchvision" or m.startswith("torchvision."))
                     and not getattr(sys.modules[m], STANDIN, False)]:
            del sys.modules[name]

    def unavailable(*_a, **_k):
        raise MissingDependencyError(why)

    for name, attrs in members.items():
        mod = sys.modules.get(name) or types.ModuleType(name)
        setattr(mod, STANDIN, True)
        for key, value in attrs.items():
            setattr(mod, key, unavailable if value is None else value)
        sys.modules[name] = mod
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, mod)
