"""Launch settings of the Triton ASVP kernels, the one home of their sizes: channel padding, tiles, warps,
pipeline stages, Jacobi limits, the grid for a feature shape (`LaunchPlan`), each kernel's signature, compile-time
constants and launch options (`launch_spec`), and the shared memory each architecture gives a block. Pure
arithmetic: no triton import, no device query.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from asvp.errors import AsvpError

MAX_CHANNELS = 128
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
JACOBI_TOL = 1e-6  # stop sweeping once ||offdiag(A)||_F <= 1e-6 ||A||_F (fp32 floor ~1e-7..2e-7 for CP 16..128)
MAX_SWEEPS = {16: 10, 32: 12, 64: 14, 128: 16}  # Jacobi converges quadratically: 4-11 sweeps seen here
MAX_SPLITS = 256  # Gram partials per sample: bounds what the eig program reads (<= 256 * CP^2 floats)
# Per CP: (pixels per tile, warps, pipeline stages) of the gram and apply kernels, and warps of the eig kernel.
# First chosen so that ptxas (sm_90, Triton 3.6) reported few register spills; not tuned for speed (no GPU was
# available). What each kernel needs per architecture (registers, spill stack, shared memory) is measured by
# benchmarks/kernel_compile.py (triton_compile.kernel_resources) and reported in BENCHMARKS.md; it moves with the Triton
# version.
TILES = {16: (128, 8, 2), 32: (128, 8, 1), 64: (32, 8, 2), 128: (16, 8, 1)}
EIG_WARPS = {16: 2, 32: 4, 64: 8, 128: 16}
FUSED_TILES = {16: (64, 2), 32: (64, 8), 64: (16, 8), 128: (16, 16)}  # (pixels, warps): it also holds Q and G
BLOCK_K = 16  # the apply kernel's K-loop step: Q is read in CP x 16 column blocks
KERNELS = ("gram", "eig", "apply", "fused")
# Most dynamic shared memory one thread block may use, per compute capability (bytes; CUDA C++ Programming Guide,
# "Technical Specifications per Compute Capability"). Triton refuses a launch above it (OutOfResources); a
# TensorRT AOT launch would fail at enqueue. 8.0+ only: Triton's README lists compute capability 8.0+ as supported.
SHARED_LIMITS = {80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024, 90: 227 * 1024,
                 100: 227 * 1024, 120: 99 * 1024}
MIN_CAPABILITY = divmod(min(SHARED_LIMITS), 10)  # (8, 0): the kernels are meant for what the table covers
ARCH_EXAMPLES = {80: "A100", 86: "A10, A10G, RTX 30xx", 87: "Jetson AGX Orin", 89: "L4, L40S, RTX 40xx",
                 90: "H100, H200", 100: "B200", 120: "RTX 50xx"}


def padded_channels(channels: int) -> int:
    """CP: the power of two >= max(channels, 16) the kernels work in (tl.dot needs dimensions >= 16)."""
    return max(16, 1 << (int(channels) - 1).bit_length())


def block_pixels(cp: int) -> int:
    """Pixels per gram/apply tile for a padded channel count CP (see TILES)."""
    return TILES[cp][0]


@dataclass(frozen=True)
class LaunchPlan:
    """Grid and compile-time sizes for one feature shape (pure arithmetic: no device query, no sync)."""

    n: int
    channels: int
    hw: int
    cp: int
    block_p: int
    iters: int  # tiles per gram/apply program (a power of two, so only a few kernel variants exist)
    nsplit: int  # gram/apply programs per sample

    @classmethod
    def for_shape(cls, n: int, channels: int, hw: int) -> "LaunchPlan":
        cp = padded_channels(channels)
        block_p = block_pixels(cp)
        tiles = max(1, -(-hw // block_p))
        iters = 1
        while -(-tiles // iters) > MAX_SPLITS:
            iters *= 2
        return cls(n, channels, hw, cp, block_p, iters, -(-tiles // iters))


def arch_supported(capability: Tuple[int, int]) -> bool:
    """Whether the kernels are meant for a device of this compute capability: 8.0 or later, what Triton's README
    lists as supported and where every kernel's shared memory is known to fit (SHARED_LIMITS)."""
    return tuple(capability) >= MIN_CAPABILITY


def launch_spec(kernel: str, channels: int, dtype: str, k: int = 4, h: float = 1.5, tau: float = 0.9,
                adaptive: bool = True) -> Tuple[dict, dict, dict]:
    """(signature of the runtime arguments, compile-time constants, launch options) of one kernel for C = channels:
    the one home of the launch settings, which `asvp_triton`, `asvp_triton_fused` and the ahead-of-time compiles
    all read. gram and apply get ITERS = 1 here; `asvp_triton` replaces it with its LaunchPlan's."""
    cp = padded_channels(channels)
    block_p, warps, stages = TILES[cp]
    c = int(channels)
    if kernel == "gram":
        return ({"x_ptr": f"*{dtype}", "part_ptr": "*fp32", "HW": "i32"},
                dict(C=c, CP=cp, BLOCK_P=block_p, ITERS=1), {"num_warps": warps, "num_stages": stages})
    if kernel == "eig":
        return ({"part_ptr": "*fp32", "nsplit": "i32", "q_ptr": "*fp32", "aux_ptr": "*fp32", "k": "i32",
                 "hm1": "fp32", "tau": "fp32", "adaptive": "i32"},
                dict(CP=cp, MAX_SWEEPS=MAX_SWEEPS[cp], TOL=JACOBI_TOL), {"num_warps": EIG_WARPS[cp]})
    if kernel == "apply":
        return ({"x_ptr": f"*{dtype}", "q_ptr": "*fp32", "y_ptr": f"*{dtype}", "HW": "i32"},
                dict(C=c, CP=cp, BLOCK_P=block_p, ITERS=1, BLOCK_K=BLOCK_K),
                {"num_warps": warps, "num_stages": stages})
    if kernel == "fused":
        return ({"x_ptr": f"*{dtype}", "HW": "i32", "y_ptr": f"*{dtype}"},
                dict(C=c, CP=cp, K=int(k), HM1=float(h) - 1.0, TAU=float(tau), ADAPTIVE=int(bool(adaptive)),
                     BLOCK_P=FUSED_TILES[cp][0], MAX_SWEEPS=MAX_SWEEPS[cp], TOL=JACOBI_TOL),
                {"num_warps": FUSED_TILES[cp][1]})
    raise AsvpError(f"unknown ASVP kernel {kernel!r}; one of {', '.join(KERNELS)}")
