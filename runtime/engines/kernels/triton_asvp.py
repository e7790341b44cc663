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
(`compile_fused`).

Status: numerics verified only in Triton's CPU interpreter (TRITON_INTERPRET=1 with CPU tensors; tests/runtime/
engines/test_triton_kernel.py). Compiled for sm_80 ... sm_120 with explicit targets: every kernel's shared memory
fits every one of those architectures at every C (`kernel_resources`, benchmarks/kernel_compile.py). Nothing here
has run on a GPU yet: GPU speed and CUDA-graph capture are unverified (benchmarks/gpu.py measures them).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import torch

from asvp.config import AsvpConfig
from asvp.errors import AsvpError, MissingDependencyError

TRITON_MIN, TRITON_MAX = (3, 5), (3, 10)  # pyproject: triton>=3.5,<3.10
INSTALL_TRITON = "pip install 'asvp[kernels]' (triton>=3.5,<3.10; runs on NVIDIA GPUs, or on CPU with TRITON_INTERPRET=1)"
MAX_CHANNELS = 128
DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
JACOBI_TOL = 1e-6  # stop sweeping once ||offdiag(A)||_F <= 1e-6 ||A||_F (fp32 floor ~1e-7..2e-7 for CP 16..128)
MAX_SWEEPS = {16: 10, 32: 12, 64: 14, 128: 16}  # Jacobi converges quadratically: 4-11 sweeps seen here
MAX_SPLITS = 256  # Gram partials per sample: bounds what the eig program reads (<= 256 * CP^2 floats)
# Per CP: (pixels per tile, warps, pipeline stages) of the gram and apply kernels, and warps of the eig kernel.
# First chosen so that ptxas (sm_90, Triton 3.6) reported few register spills; not tuned for speed (no GPU was
# available). What each kernel needs per architecture (registers, spill stack, shared memory) is measured by
# benchmarks/kernel_compile.py (`kernel_resources` below) and reported in BENCHMARKS.md; it moves with the Triton
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


class KernelStats(NamedTuple):
    """Per-sample diagnostics from the eig kernel (device tensors; reading them synchronises, the kernel does not)."""

    energies: torch.Tensor  # [N, C] eigenvalues of G = M M^T, descending (fp32; the reference's s_i^2)
    kept: torch.Tensor  # [N, C] 1.0 where that direction is amplified (same order as energies)
    sweeps: torch.Tensor  # [N] Jacobi sweeps used


# ---- availability ----------------------------------------------------------------------------------------------

def _version_tuple(text: str) -> Tuple[int, ...]:
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
    version = _version_tuple(getattr(triton, "__version__", "0"))
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


def arch_supported(capability: Tuple[int, int]) -> bool:
    """Whether the kernels are meant for a device of this compute capability: 8.0 or later, what Triton's README
    lists as supported and where every kernel's shared memory is known to fit (SHARED_LIMITS)."""
    return tuple(capability) >= MIN_CAPABILITY


def usable_for(feat) -> bool:
    """Whether `asvp_triton` can take this tensor: CUDA on a compute capability >= 8.0 device, 1..MAX_CHANNELS
    channels, a supported dtype, Triton there. (The TensorRT JIT plugin falls back to torch otherwise.)"""
    if not (isinstance(feat, torch.Tensor) and feat.is_cuda and feat.ndim == 4 and feat.dtype in DTYPES
            and 1 <= feat.shape[1] <= MAX_CHANNELS):
        return False
    if not arch_supported(torch.cuda.get_device_capability(feat.device)):  # a cached host query: no sync
        return False
    try:
        require_triton()
    except MissingDependencyError:
        return False
    return True


def _kernels():
    """The kernels module (imports triton); MissingDependencyError when Triton is missing."""
    require_triton()
    from asvp.runtime.engines.kernels import triton_asvp_jit

    return triton_asvp_jit


def _interpreted(kernels) -> bool:
    return type(kernels._asvp_fused_kernel).__name__ == "InterpretedFunction"


# ---- the op ----------------------------------------------------------------------------------------------------

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
    if feat.device.type == "cpu" and not _interpreted(kernels):
        raise MissingDependencyError("asvp_triton got CPU tensors, which only Triton's interpreter runs: set "
                                     "TRITON_INTERPRET=1 before the kernels are imported, or pass CUDA tensors")
    if feat.device.type not in ("cpu", "cuda"):
        raise AsvpError(f"asvp_triton runs on CUDA tensors (or CPU ones in the interpreter), got {feat.device}")


def _prepare(feat, k, h, tau, out):
    kernels = _kernels()
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
    _, consts, opts = _launch_spec("gram", c, dtype)
    kernels._asvp_gram_kernel[(n, plan.nsplit)](x, part, plan.hw, **dict(consts, ITERS=plan.iters), **opts)
    _, consts, opts = _launch_spec("eig", c, dtype)
    kernels._asvp_eig_kernel[(n,)](part, plan.nsplit, q, aux, int(k), float(h) - 1.0, float(tau),
                                   int(bool(adaptive)), **consts, **opts)
    _, consts, opts = _launch_spec("apply", c, dtype)
    kernels._asvp_apply_kernel[(n, plan.nsplit)](x, q, y, plan.hw, **dict(consts, ITERS=plan.iters), **opts)
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
    _, consts, opts = _launch_spec("fused", c, DTYPES[x.dtype], k, h, tau, adaptive)
    kernels._asvp_fused_kernel[(n,)](x, hh * ww, y, **consts, **opts)
    return y


# ---- ahead-of-time compilation (TensorRT's aot_impl) -----------------------------------------------------------

@dataclass(frozen=True)
class CompiledKernel:
    """A compiled `_asvp_fused_kernel`: launch it with grid (N,), block (num_warps * 32,), `shared` bytes of
    dynamic shared memory and arguments (x_ptr, HW as int32, y_ptr)."""

    name: str
    ptx: str
    num_warps: int
    shared: int
    target: str


def _launch_spec(kernel: str, channels: int, dtype: str, k: int = 4, h: float = 1.5, tau: float = 0.9,
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


def compile_kernel(kernel: str, channels: int, target: Optional[Tuple[str, int, int]] = None, dtype: str = "fp32",
                   **attrs):
    """One of the ASVP kernels (KERNELS) compiled by Triton's real compiler for C = channels: Triton's
    CompiledKernel (asm: ptx, cubin; metadata: name, num_warps, shared). target: (backend, arch, warp size), e.g.
    ("cuda", 86, 32) to compile without a GPU; None uses the current device. attrs: k, h, tau, adaptive of the
    fused kernel (compile-time constants there). Raises MissingDependencyError without Triton, AsvpError for bad
    arguments or when the kernels are interpreted (TRITON_INTERPRET=1)."""
    triton = require_triton()
    from triton.backends.compiler import GPUTarget

    kernels = _kernels()
    if not 1 <= int(channels) <= MAX_CHANNELS:
        raise AsvpError(f"the ASVP kernels support 1..{MAX_CHANNELS} channels, got C={channels}")
    if dtype not in DTYPES.values():
        raise AsvpError(f"dtype must be one of {sorted(DTYPES.values())}, got {dtype!r}")
    if _interpreted(kernels):
        raise AsvpError("compiling the ASVP kernels needs them compiled, not interpreted: unset TRITON_INTERPRET")
    signature, consts, options = _launch_spec(kernel, channels, dtype, **attrs)
    signature.update({name: "constexpr" for name in consts})
    fn = getattr(kernels, f"_asvp_{kernel}_kernel")
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts)
    return triton.compile(src, target=GPUTarget(*target) if target is not None else None, options=options)


def compile_fused(channels: int, k: int, h: float, tau: float, adaptive: bool, dtype: str = "fp32",
                  target: Optional[Tuple[str, int, int]] = None) -> CompiledKernel:
    """PTX of the fused kernel for one (C, k, h, tau, adaptive, dtype), e.g. for `tensorrt.plugin.aot_impl`.

    target: (backend, arch, warp size), e.g. ("cuda", 90, 32) to compile without a GPU; None uses the current
    device. Raises MissingDependencyError without Triton, AsvpError when the kernel would need Triton's hidden
    scratch-buffer arguments (TensorRT launches with the visible arguments only) or more shared memory than the
    target architecture gives one block (SHARED_LIMITS).
    """
    compiled = compile_kernel("fused", channels, target, dtype, k=k, h=h, tau=tau, adaptive=adaptive)
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise AsvpError("the fused ASVP kernel compiled to a variant that needs Triton's hidden scratch buffers, "
                        "which a TensorRT AOT launch does not pass")
    limit = SHARED_LIMITS.get(int(target[1])) if target is not None else None
    if limit is not None and meta.shared > limit:
        raise AsvpError(f"the fused ASVP kernel for C={channels} needs {meta.shared} bytes of shared memory, more "
                        f"than sm_{target[1]} gives one block ({limit})")
    arch = f"{target[0]}:{target[1]}" if target is not None else "current device"
    return CompiledKernel(meta.name, compiled.asm["ptx"], meta.num_warps, meta.shared, arch)


# ---- what a kernel needs on an architecture (no GPU needed) ----------------------------------------------------

@dataclass(frozen=True)
class KernelResources:
    """What one compiled kernel asks of an SM: from Triton's metadata (shared memory, warps) and the cubin's
    resource table (`cuobjdump --dump-resource-usage`: registers per thread, stack bytes per thread, where ptxas
    puts spilled registers)."""

    kernel: str
    arch: int
    channels: int
    cp: int
    warps: int
    registers: int
    stack_bytes: int
    shared_bytes: int
    shared_limit: Optional[int]  # SHARED_LIMITS[arch], None for an architecture not listed there

    @property
    def fits(self) -> Optional[bool]:
        """Whether a block's shared memory is within the architecture's limit (None: limit unknown)."""
        return None if self.shared_limit is None else self.shared_bytes <= self.shared_limit


def _cuobjdump_usage(cubin: bytes) -> Tuple[int, int]:
    """(registers, stack bytes) of the one function in a cubin, from the cuobjdump Triton ships."""
    triton = require_triton()
    try:
        tool = triton.knobs.nvidia.cuobjdump.path
    except AttributeError:  # no knobs module: the wheel's own copy
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        res = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True, text=True, timeout=120)
    fields = dict(part.split(":", 1) for line in res.stdout.splitlines() if "REG:" in line
                  for part in line.split() if ":" in part)
    if res.returncode != 0 or "REG" not in fields:
        raise AsvpError(f"cuobjdump could not read the compiled kernel's resources: {res.stderr.strip()[:200]}")
    return int(fields["REG"]), int(fields["STACK"])


def kernel_resources(kernel: str, channels: int, arch: int, dtype: str = "fp32") -> KernelResources:
    """Compile one kernel for sm_<arch> (no GPU needed) and read what a block of it needs."""
    compiled = compile_kernel(kernel, channels, ("cuda", int(arch), 32), dtype)
    regs, stack = _cuobjdump_usage(compiled.asm["cubin"])
    meta = compiled.metadata
    return KernelResources(kernel, int(arch), int(channels), padded_channels(channels), meta.num_warps, regs, stack,
                           meta.shared, SHARED_LIMITS.get(int(arch)))
