"""Whether the Triton ASVP kernels can run here, and loading them: Triton in the supported range, then a CUDA
device or Triton's CPU interpreter. Only `load_kernels` imports the kernels module (which imports triton), so
importing asvp never needs Triton.
"""
from __future__ import annotations

import os
from typing import Tuple

import torch

from asvp.errors import MissingDependencyError

TRITON_MIN, TRITON_MAX = (3, 5), (3, 10)  # pyproject: triton>=3.5,<3.10
INSTALL_TRITON = "pip install 'asvp[kernels]' (triton>=3.5,<3.10; runs on NVIDIA GPUs, or on CPU with TRITON_INTERPRET=1)"


def version_tuple(text: str) -> Tuple[int, ...]:
    """(major, minor) of a version string, ignoring suffixes such as '3.6.0+git1234'."""
    out = []
    for piece in str(text).split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def require_triton():
    """The `triton` module, or a one-line MissingDependencyError saying what to install."""
    try:
        import triton
    except Exception as exc:  # ImportError, or a broken install
        raise MissingDependencyError(f"Triton is not installed ({type(exc).__name__}): {INSTALL_TRITON}") from None
    version = version_tuple(getattr(triton, "__version__", "0"))
    if not TRITON_MIN <= version < TRITON_MAX:
        raise MissingDependencyError(f"Triton {triton.__version__} is outside the supported range: {INSTALL_TRITON}")
    return triton


def interpreter_requested() -> bool:
    """Whether TRITON_INTERPRET=1 is set (Triton reads it when a kernel is defined, i.e. at the kernels' import)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def triton_status() -> Tuple[bool, str]:
    """(usable, detail): Triton in the supported range, plus a CUDA device or the CPU interpreter."""
    try:
        triton = require_triton()
    except MissingDependencyError as exc:
        return False, str(exc)
    if interpreter_requested():
        return True, f"Triton {triton.__version__} in its CPU interpreter (TRITON_INTERPRET=1; numerics only, slow)"
    if torch.cuda.is_available():
        return True, f"Triton {triton.__version__} on CUDA device {torch.cuda.get_device_name(0)}"
    return False, (f"Triton {triton.__version__} is installed but no CUDA device is visible to torch and "
                   f"TRITON_INTERPRET is not 1")


def load_kernels():
    """The kernels module (imports triton); MissingDependencyError when Triton is missing."""
    require_triton()
    from asvp.runtime.engines.kernels import triton_asvp_jit

    return triton_asvp_jit


def interpreted(kernels) -> bool:
    """Whether the loaded kernels run in Triton's CPU interpreter (TRITON_INTERPRET=1 when they were imported)."""
    return type(kernels.asvp_fused_kernel).__name__ == "InterpretedFunction"
