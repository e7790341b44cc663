"""The fp16/bf16 part of benchmarks/gpu.py (issue 26.6): what the defence does below fp32 on a CUDA device.

  kernel rows   the Triton kernel (fp16/bf16 input and output, fp32 accumulation) on the sr teacher's defended
                feature, as seen and scaled x100 and x1e-3: relative error of the output and of the perturbation
                (output - input) against the float64 reference of the rounded input, non-finite outputs, timing
  model rows    each defended model (subgraph mode, inline) converted by onnx2torch and run in fp32, fp16 and
                bf16 on CUDA against the same module in float64: relative error of the output, non-finite
                outputs, timing. Skipped, with the reason, when onnx2torch is not importable (it is optional)

gpu.py calls `kernel_rows` and `model_rows` with gpu_timing's measure/device (tests swap in CPU stand-ins) and appends
`markdown(section)` to its report. Nothing here has run on a GPU yet.
"""
from __future__ import annotations

import copy

import torch

from asvp.errors import MissingDependencyError
from asvp.method import asvp_reference

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
MODEL_DTYPES = {"fp32": torch.float32, **DTYPES}
SCALES = (1.0, 100.0, 1e-3)  # issue 26.1's activation scales: as seen, x100, x1e-3


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def accuracy(out: torch.Tensor, ref: torch.Tensor, x: torch.Tensor | None = None) -> dict:
    """Relative error of `out` against the float64 `ref` (and, given the input `x`, of the perturbation out - x
    against ref - x), and how many outputs are inf/NaN."""
    out64, ref64 = out.detach().cpu().double(), ref.detach().cpu().double()
    finite = torch.isfinite(out64)
    res = {"nonfinite": int((~finite).sum()),
           "rel_err": float((out64 - ref64).norm() / ref64.norm()) if bool(finite.all()) else None}
    if x is not None:
        x64 = x.detach().cpu().double()
        dref = ref64 - x64
        ok = bool(finite.all()) and float(dref.norm()) > 0
        res["pert_rel_err"] = float((out64 - x64 - dref).norm() / dref.norm()) if ok else None
    return res


def kernel_rows(feat: torch.Tensor, run_kernel, cfg, measure, iters: int, warmup: int, errors: list) -> list:
    """The kernel `run_kernel(x)` on `feat` in fp16 and bf16 at each of SCALES."""
    rows = []
    for name, dtype in DTYPES.items():
        for scale in SCALES:
            row = {"dtype": name, "scale": scale, "feature": "x".join(map(str, feat.shape))}
            try:
                x = (feat.float() * scale).to(dtype).contiguous()
                out = run_kernel(x)
                row.update(accuracy(out, asvp_reference(x.cpu(), cfg), x))
                row.update(measure(lambda: run_kernel(x), iters, warmup))
            except Exception as exc:
                row["error"] = one_line(exc)
                errors.append(f"precision kernel {name} x{scale:g}: {row['error']}")
            rows.append(row)
    return rows


def model_rows(defended: dict, shape, device: str, convert, measure, iters: int, warmup: int, errors: list) -> list:
    """Each defended ONNX model (task -> path), converted by `convert(path)` (a torch module), in float64 as the
    reference and in MODEL_DTYPES; one row saying why when `convert` is unavailable (MissingDependencyError)."""
    rows = []
    for task, path in defended.items():
        try:
            net = convert(str(path))
        except MissingDependencyError as exc:
            return [{"skipped": str(exc)}]
        except Exception as exc:
            rows.append({"task": task, "error": one_line(exc)})
            errors.append(f"precision {task}: conversion failed: {rows[-1]['error']}")
            continue
        x = torch.rand(shape, device=device)
        try:
            with torch.no_grad():
                ref = copy.deepcopy(net).double()(x.double())
        except Exception as exc:
            rows.append({"task": task, "error": f"float64 reference: {one_line(exc)}"})
            errors.append(f"precision {task}: {rows[-1]['error']}")
            continue
        for name, dtype in MODEL_DTYPES.items():
            row = {"task": task, "dtype": name, "shape": "x".join(map(str, shape))}
            try:
                low, xl = copy.deepcopy(net).to(dtype), x.to(dtype)

                def run(low=low, xl=xl):
                    with torch.no_grad():
                        return low(xl)

                row.update(accuracy(run(), ref))
                row.update(measure(run, iters, warmup))
            except Exception as exc:
                row["error"] = one_line(exc)
                errors.append(f"precision {task} {name}: {row['error']}")
            rows.append(row)
    return rows


def _f(value, fmt):
    return "n/a" if value is None else fmt.format(value)


def markdown(section: dict) -> list[str]:
    """The report's reduced-precision section (lines)."""
    lines = ["", "## Reduced precision (fp16 / bf16)", "",
             "The Triton kernel with fp16/bf16 input (fp32 accumulation) on the sr teacher's feature at three "
             "activation scales, against the float64 reference of the rounded input; perturbation = output - input.",
             "", "| dtype | scale | feature | rel. error (output) | rel. error (perturbation) | inf/NaN | busy (us) |",
             "|---|---|---|---|---|---|---|"]
    for r in section.get("kernel", []):
        if "error" in r:
            lines.append(f"| {r['dtype']} | x{r['scale']:g} | {r['feature']} | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['dtype']} | x{r['scale']:g} | {r['feature']} | {_f(r['rel_err'], '{:.1e}')} | "
                     f"{_f(r.get('pert_rel_err'), '{:.1e}')} | {r['nonfinite']} | {_f(r.get('busy_us'), '{:.1f}')} |")
    models = section.get("models", [])
    lines += ["", "Defended models (subgraph mode) through onnx2torch on CUDA, against the same module in float64.", ""]
    if models and "skipped" in models[0]:
        return lines + [f"Skipped: {models[0]['skipped']}."]
    lines += ["| task | dtype | input | rel. error (output) | inf/NaN | busy (us) |", "|---|---|---|---|---|---|"]
    for r in models:
        if "error" in r:
            lines.append(f"| {r['task']} | {r.get('dtype', '')} | {r.get('shape', '')} | failed: {r['error']} | | |")
            continue
        lines.append(f"| {r['task']} | {r['dtype']} | {r['shape']} | {_f(r['rel_err'], '{:.1e}')} | "
                     f"{r['nonfinite']} | {_f(r.get('busy_us'), '{:.1f}')} |")
    return lines
