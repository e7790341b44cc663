"""What `asvp validate --precision fp16|bf16` adds to a validation: the models run converted to that precision
(runtime/engines/reduced.py), and beside them the clean model in fp32 on ONNX Runtime, so that the report says

* the teacher's fidelity at that precision: the converted clean model's output against the fp32 clean model's
  (pooled PSNR, max |diff|);
* how many images gave inf/NaN, per output of each model (the image output and every tap output);
* which ops did not run in the reduced dtype (runtime.engines.reduced: no kernel, or fp32 inside a converted op).

The ASVP reference error at that precision is the usual tap measure (validate_metrics.FeatureStats): the clean
features come from the clean model at the same precision, so it is the error of the reduced-precision subgraph on
the reduced-precision feature against the float64 reference of that feature.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from asvp.metrics import psnr_from_mse
from asvp.runtime.engines import backends

FP32 = "fp32"


@dataclass
class PrecisionReport:
    """The reduced-precision part of a ValidationResult (None at fp32)."""

    precision: str
    reference: str  # what ran the fp32 clean model
    teacher_fidelity_psnr: float | None  # converted clean vs fp32 clean, pooled MSE, outputs clipped to [0, 1]
    teacher_max_abs_diff: float
    nonfinite_images: dict = field(default_factory=dict)  # "clean:OUTPUT" / "defended:OUTPUT" -> images with inf/NaN
    fp32_ops: list = field(default_factory=list)  # what did not run in the reduced dtype (one line each)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def finite(self) -> bool:
        return not any(self.nonfinite_images.values())

    def summary_lines(self) -> list[str]:
        bad = {k: v for k, v in self.nonfinite_images.items() if v}
        lines = [f"{self.precision}: teacher fidelity (converted clean vs fp32 clean on {self.reference}) PSNR "
                 f"{_fmt(self.teacher_fidelity_psnr)} dB, max |diff| {self.teacher_max_abs_diff:.3g}",
                 f"{self.precision}: inf/NaN " + (", ".join(f"{k} on {v} image(s)" for k, v in bad.items())
                                                  if bad else "none")]
        return lines + [f"{self.precision}: {n}" for n in self.fp32_ops]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


class PrecisionCheck:
    """Runs the fp32 clean model beside a reduced-precision validation and gathers the PrecisionReport (a context
    manager: the fp32 runner is active inside it)."""

    def __init__(self, clean, precision: str, input_shape=None):
        self.precision = precision
        self.runner = backends.make_runner(clean, "onnxrt-cpu", input_shape=input_shape, name="clean fp32")
        self.sq, self.max_abs, self.bad, self.models = [], 0.0, {}, {}

    def __enter__(self):
        self.runner.activate()
        return self

    def __exit__(self, *exc):
        self.runner.deactivate()

    def add(self, feed: dict, out_c: str, clean_outs: dict, defended_outs: dict, runners=()) -> None:
        for r in runners:  # the converted models (an active ReducedPrecisionRunner's), for their fp32 fallbacks
            if hasattr(getattr(r, "model", None), "fp32_notes"):
                self.models[r.name] = r.model
        ref = np.asarray(self.runner.infer(feed)[out_c], np.float32)
        oc = np.asarray(clean_outs[out_c], np.float32)
        for who, outs in (("clean", clean_outs), ("defended", defended_outs)):
            for name, v in outs.items():
                key = f"{who}:{name}"
                self.bad[key] = self.bad.get(key, 0) + int(not np.all(np.isfinite(v)))
        if np.all(np.isfinite(oc)):
            self.sq.append(float(np.mean((np.clip(oc, 0, 1).astype(np.float64) - np.clip(ref, 0, 1)) ** 2)))
            self.max_abs = max(self.max_abs, float(np.abs(oc - ref).max()))

    def report(self) -> PrecisionReport:
        notes = [f"{name}: {n}" for name, m in self.models.items() for n in m.fp32_notes()]
        psnr = psnr_from_mse(float(np.mean(self.sq))) if self.sq else None
        return PrecisionReport(self.precision, backends.actual_provider(self.runner, "onnxrt-cpu"), psnr,
                               self.max_abs, dict(self.bad), notes)
