"""Ahead-of-time compilation of the Triton ASVP kernels with Triton's real compiler, for the current device or an
explicit target (no GPU needed): the fused kernel's PTX for TensorRT's AOT plugin (`compile_fused`), and what a
kernel asks of an SM on an architecture (`kernel_resources`: registers, spill stack, shared memory), which
benchmarks/kernel_compile.py tabulates.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional, Tuple

from asvp.errors import AsvpError
from asvp.runtime.engines.kernels import triton_env  # called through the module: one place to stand in for Triton
from asvp.runtime.engines.kernels.triton_launch import DTYPES, MAX_CHANNELS, SHARED_LIMITS, launch_spec, padded_channels


@dataclass(frozen=True)
class CompiledKernel:
    """A compiled `asvp_fused_kernel`: launch it with grid (N,), block (num_warps * 32,), `shared` bytes of
    dynamic shared memory and arguments (x_ptr, HW as int32, y_ptr)."""

    name: str
    ptx: str
    num_warps: int
    shared: int
    target: str


def compile_kernel(kernel: str, channels: int, target: Optional[Tuple[str, int, int]] = None, dtype: str = "fp32",
                   **attrs):
    """One of the ASVP kernels (KERNELS) compiled by Triton's real compiler for C = channels: Triton's
    CompiledKernel (asm: ptx, cubin; metadata: name, num_warps, shared). target: (backend, arch, warp size), e.g.
    ("cuda", 86, 32) to compile without a GPU; None uses the current device. attrs: k, h, tau, adaptive of the
    fused kernel (compile-time constants there). Raises MissingDependencyError without Triton, AsvpError for bad
    arguments or when the kernels are interpreted (TRITON_INTERPRET=1)."""
    triton = triton_env.require_triton()
    from triton.backends.compiler import GPUTarget

    kernels = triton_env.load_kernels()
    if not 1 <= int(channels) <= MAX_CHANNELS:
        raise AsvpError(f"the ASVP kernels support 1..{MAX_CHANNELS} channels, got C={channels}")
    if dtype not in DTYPES.values():
        raise AsvpError(f"dtype must be one of {sorted(DTYPES.values())}, got {dtype!r}")
    if triton_env.interpreted(kernels):
        raise AsvpError("compiling the ASVP kernels needs them compiled, not interpreted: unset TRITON_INTERPRET")
    signature, consts, options = launch_spec(kernel, channels, dtype, **attrs)
    signature.update({name: "constexpr" for name in consts})
    fn = getattr(kernels, f"asvp_{kernel}_kernel")
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
    triton = triton_env.require_triton()
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
