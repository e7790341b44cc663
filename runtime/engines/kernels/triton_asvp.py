"""ASVP as a short, fixed sequence of Triton kernels: no host synchronisation, so CUDA-graph capturable.

    asvp_triton(feat, k, h, tau, adaptive, out=None) -> Tensor

computes, per sample n of feat [N, C, H, W] (M = feat[n] as C x H*W):

    M' = M + (h - 1) U_k diag(mask) U_k^T M = (I + Q) M,   Q = U diag((h - 1) mask) U^T

with U, energies = eigenvectors, eigenvalues of the Gram matrix G = M M^T (descending) and the mask of
`asvp.method.adaptive_k_mask` (adaptive: keep direction j while the energy before it is < tau * total, at most k;
fixed: the top k). Three launches (triton_asvp_jit.py has the kernels):

    1. gram   grid (N, S)   each program sums M_t M_t^T over a contiguous pixel range into its own fp32 CP x CP
                            partial (no atomics: the sum order is fixed, so results are deterministic)
    2. eig    grid (N,)     sums the S partials, normalises G by its trace and diagonalises it on chip with
                            parallel cyclic Jacobi (CP/2 rotations per round, CP - 1 rounds per sweep, sweeps until
                            the off-diagonal norm is <= 1e-6 relative or MAX_SWEEPS), then the mask and Q
    3. apply  grid (N, S)   out tile = M_t + Q M_t in fp32 (Q read in CP x 16 column blocks), stored in the input
                            dtype

C is a compile-time constant (padded to CP = next power of two >= 16 inside the kernels; padded rows are zero and
never rotate), N, H, W are runtime values. fp16/bf16 inputs are read as fp32 (all math is fp32, dots with
input_precision="ieee"); the output has the input's dtype. `out` may be `feat` itself (the apply pass reads each
tile before writing it, and the Gram pass has finished by then).

`asvp_triton_fused` runs the same math as one kernel with one program per sample and no workspace: slower (one
SM streams a whole sample) but a single launch, which is what TensorRT's AOT plugin route can embed
(`triton_compile.compile_fused`).

Status: numerics verified only in Triton's CPU interpreter (TRITON_INTERPRET=1 with CPU tensors; tests/runtime/
engines/test_triton_kernel.py). Compiled for sm_80 ... sm_120 with explicit targets: every kernel's shared memory
fits every one of those architectures at every C (`triton_compile.kernel_resources`, benchmarks/kernel_compile.py).
Nothing here has run on a GPU yet: GPU speed and CUDA-graph capture are unverified (benchmarks/gpu.py measures
them).

This module is the torch-facing side (checks, workspace, launches). Beside it: triton_launch.py (the launch
settings), triton_env.py (Triton's availability; the only loader of the kernels), triton_compile.py (ahead-of-time
compiles and per-architecture resources).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from asvp.config import AsvpConfig
from asvp.errors import AsvpError, MissingDependencyError
from asvp.runtime.engines.kernels import triton_env  # called through the module: one place to stand in for Triton
from asvp.runtime.engines.kernels.triton_launch import DTYPES, MAX_CHANNELS, LaunchPlan, arch_supported, launch_spec


class KernelStats(NamedTuple):
    """Per-sample diagnostics from the eig kernel (device tensors; reading them synchronises, the kernel does not)."""

    energies: torch.Tensor  # [N, C] eigenvalues of G = M M^T, descending (fp32; the reference's s_i^2)
    kept: torch.Tensor  # [N, C] 1.0 where that direction is amplified (same order as energies)
    sweeps: torch.Tensor  # [N] Jacobi sweeps used


def usable_for(feat) -> bool:
    """Whether `asvp_triton` can take this tensor: CUDA on a compute capability >= 8.0 device, 1..MAX_CHANNELS
    channels, a supported dtype, Triton there. (The TensorRT JIT plugin falls back to torch otherwise.)"""
    if not (isinstance(feat, torch.Tensor) and feat.is_cuda and feat.ndim == 4 and feat.dtype in DTYPES
            and 1 <= feat.shape[1] <= MAX_CHANNELS):
        return False
    if not arch_supported(torch.cuda.get_device_capability(feat.device)):  # a cached host query: no sync
        return False
    try:
        triton_env.require_triton()
    except MissingDependencyError:
        return False
    return True


def config_args(cfg: AsvpConfig) -> Tuple[int, float, float, bool]:
    """(k, h, tau, adaptive) of an AsvpConfig, in `asvp_triton`'s argument order."""
    return cfg.k, cfg.h, cfg.tau, cfg.k_mode == "adaptive"


def _check(feat: torch.Tensor, k: int, h: float, tau: float, out: Optional[torch.Tensor], kernels) -> None:
    if not isinstance(feat, torch.Tensor) or feat.ndim != 4:
        shape = tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__
        raise AsvpError(f"asvp_triton expects a rank-4 NCHW tensor, got {shape}")
    if feat.dtype not in DTYPES:
        raise AsvpError(f"asvp_triton supports float32, float16 and bfloat16 features, got {feat.dtype}")
    if not 1 <= feat.shape[1] <= MAX_CHANNELS:
        raise AsvpError(f"asvp_triton supports 1..{MAX_CHANNELS} channels, got C={feat.shape[1]}")
    if int(k) < 1 or not h > 0 or not 0 < tau <= 1:
        raise AsvpError(f"asvp_triton needs k >= 1, h > 0, 0 < tau <= 1; got k={k}, h={h}, tau={tau}")
    if out is not None and (out.shape != feat.shape or out.dtype != feat.dtype or out.device != feat.device
                            or not out.is_contiguous()):
        raise AsvpError(f"asvp_triton: out must be a contiguous {feat.dtype} tensor of shape {tuple(feat.shape)} on "
                        f"{feat.device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
    if feat.device.type == "cpu" and not triton_env.interpreted(kernels):
        raise MissingDependencyError("asvp_triton got CPU tensors, which only Triton's interpreter runs: set "
                                     "TRITON_INTERPRET=1 before the kernels are imported, or pass CUDA tensors")
    if feat.device.type not in ("cpu", "cuda"):
        raise AsvpError(f"asvp_triton runs on CUDA tensors (or CPU ones in the interpreter), got {feat.device}")


def _prepare(feat, k, h, tau, out):
    kernels = triton_env.load_kernels()
    _check(feat, k, h, tau, out, kernels)
    x = feat.contiguous()
    y = torch.empty_like(x) if out is None else out
    return kernels, x, y


def asvp_triton(feat: torch.Tensor, k: int, h: float, tau: float, adaptive: bool, out: Optional[torch.Tensor] = None,
                *, stats: bool = False):
    """ASVP of feat [N, C, H, W] through three Triton launches; returns `out` (allocated when None).

    No host synchronisation and no data-dependent shapes: safe inside torch.cuda.graph capture once the kernels
    have been compiled by a first call outside the capture. With stats=True returns (out, KernelStats).
    """
    kernels, x, y = _prepare(feat, k, h, tau, out)
    n, c, hh, ww = x.shape
    if x.numel() == 0:
        return (y, None) if stats else y
    plan = LaunchPlan.for_shape(n, c, hh * ww)
    cp = plan.cp
    part = torch.empty((n, plan.nsplit, cp, cp), dtype=torch.float32, device=x.device)
    q = torch.empty((n, cp, cp), dtype=torch.float32, device=x.device)
    aux = torch.empty((n, 3, cp), dtype=torch.float32, device=x.device)
    dtype = DTYPES[x.dtype]
    _, consts, opts = launch_spec("gram", c, dtype)
    kernels.asvp_gram_kernel[(n, plan.nsplit)](x, part, plan.hw, **dict(consts, ITERS=plan.iters), **opts)
    _, consts, opts = launch_spec("eig", c, dtype)
    kernels.asvp_eig_kernel[(n,)](part, plan.nsplit, q, aux, int(k), float(h) - 1.0, float(tau),
                                   int(bool(adaptive)), **consts, **opts)
    _, consts, opts = launch_spec("apply", c, dtype)
    kernels.asvp_apply_kernel[(n, plan.nsplit)](x, q, y, plan.hw, **dict(consts, ITERS=plan.iters), **opts)
    if not stats:
        return y
    return y, KernelStats(aux[:, 0, :c], aux[:, 1, :c], aux[:, 2, 0].to(torch.int32))


def asvp_triton_fused(feat: torch.Tensor, k: int, h: float, tau: float, adaptive: bool,
                      out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same ASVP as one kernel launch, one program per sample, no workspace (the TensorRT AOT kernel).

    k, h, tau and adaptive are compile-time constants here (TensorRT does not serialise AOT plugin attributes, so
    they are baked into the PTX); each new combination compiles a new variant.
    """
    kernels, x, y = _prepare(feat, k, h, tau, out)
    n, c, hh, ww = x.shape
    if x.numel() == 0:
        return y
    _, consts, opts = launch_spec("fused", c, DTYPES[x.dtype], k, h, tau, adaptive)
    kernels.asvp_fused_kernel[(n,)](x, hh * ww, y, **consts, **opts)
    return y
