"""The ASVP configuration: one dataclass shared by the reference, the graph passes and the plugin."""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace

from asvp.errors import AsvpError

PLACEMENTS = ("inline", "tap")
K_MODES = ("adaptive", "fixed")
# Defence variants beyond the paper (docs/variants.md): "paper" is ASVP as published; the keyed ones change the
# perturbation per query with a hash of the query's own feature, seeded by `key`.
VARIANTS = ("paper", "keyed-h", "keyed-rotation")
KEYED_VARIANTS = VARIANTS[1:]
DEFAULT_ANGLE_MAX = 30.0  # keyed-rotation: per-query angles uniform in [-angle_max, angle_max] degrees
# The variant fields are written by to_dict only when they differ from these, so configurations without a variant
# keep the dict and digest they had before variants existed (cached attack results and model metadata stay valid).
_VARIANT_DEFAULTS = {"variant": "paper", "h_max": None, "angle_max": None}
# The largest h (and keyed-h h_max). h becomes a float32 constant and the defended output grows in proportion to it
# (inline; h = 1e30 still gave finite outputs on the bundled sr teacher, h = 1e39 is inf in float32 and every output
# NaN/inf). 1e3 already makes the perturbed feature worthless, and keeps several chained inline nodes (h^n) far
# inside float32's range (3.4e38). `asvp sweep` tries 1.1 to 3 by default.
MAX_H = 1e3
# The largest power-iteration depth. Each step squares the deflated Gram again (its power doubles). An eigenvalue
# ratio r that float32 can tell from 1 is at most 1 - 2^-24, and r^(2^s) <= exp(-2^(s - 24)): exp(-16) = 1.1e-7 at
# s = 28 squarings, about float32's epsilon (6e-8), exp(-32) at 29. Beyond iters = 28 (29 squarings for the columns
# after the second) no float32 spectrum converges further; the measured error is at float32's floor from iters = 4
# on (docs/method.md section 4). Unbounded, iters = 100000 built its graph for more than ten minutes.
MAX_ITERS = 28


@dataclass(frozen=True)
class AsvpConfig:
    """How features are perturbed at each defended node.

    h:          amplification of the top-k singular values (s_i -> h * s_i), h > 0 (h > 1 amplifies).
    k:          fixed k, or the cap k_max when k_mode == "adaptive". Must be < channels.
    k_mode:     "adaptive": per sample, the smallest k whose singular values hold a share `tau` of the
                energy sum(s_i^2), capped at k; "fixed": always k.
    tau:        energy share for the adaptive rule, in (0, 1].
    iters:      power-iteration depth of the standard-op subgraph: repeated squarings per basis column (iters for the
                first two, iters + 1 after; docs/method.md section 3). The plugin is exact.
    placement:  "inline" (the perturbed feature replaces the original for every consumer) or
                "tap" (the network runs on clean features; the perturbed feature is an extra output).
    variant:    "paper" (ASVP as published), or a keyed variant (docs/variants.md; subgraph mode only):
                "keyed-h": per query h_q in [h, h_max], a keyed hash of the query's own feature;
                "keyed-rotation": the top-k directions are also rotated in pairs by keyed per-query angles in
                [-angle_max, angle_max] degrees (default DEFAULT_ANGLE_MAX), M' = M + U (R_q H - I) U^T M.
                Measured, neither protects: averaging the answers to flipped copies of each query defeats keyed-h,
                and keyed-rotation never hurt students (docs/variants.md).
    h_max:      keyed-h: the upper end of the per-query amplification (> h).
    angle_max:  keyed-rotation: the largest rotation angle, degrees, in (0, 180].
    key:        keyed variants: the secret (int or str) that seeds the hash. It is never written by to_dict, so it
                is neither in the digest nor in the defended model's metadata; the graph's constants encode it.
    """

    h: float = 1.5
    k: int = 4
    k_mode: str = "adaptive"
    tau: float = 0.9
    iters: int = 4  # <= 6e-5 relative error at every candidate node of the bundled teachers, 118 ONNX nodes at C <= 32 (docs/method.md)
    # "tap" is the shipped default because it is the only placement that kept the teacher's PSNR drop
    # <= 0.1 dB on all five bundled teachers in `asvp sweep` (inline costs 0.1-0.9 dB already at h = 1.02-1.1
    # on underwater and derain). No configuration measured so far gives a student drop above seed noise
    # at that teacher cost: see docs/protection.md.
    placement: str = "tap"
    variant: str = "paper"
    h_max: float | None = None
    angle_max: float | None = None
    key: int | str | None = field(default=None, repr=False, compare=False)

    def validate(self, channels: int | None = None) -> "AsvpConfig":
        if not (isinstance(self.h, (int, float)) and math.isfinite(self.h)):
            raise AsvpError(f"h must be a finite number, got {self.h!r}")
        if self.h <= 0:
            raise AsvpError(f"h must be > 0 (it scales singular values), got {self.h}")
        if self.h > MAX_H:
            raise AsvpError(f"h must be <= {MAX_H:g} (the defended output grows with h), got {self.h:g}")
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau)) or not 0 < self.tau <= 1:
            raise AsvpError(f"tau must be in (0, 1], got {self.tau!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise AsvpError(f"k must be an integer >= 1, got {self.k!r}")
        if not isinstance(self.iters, int) or self.iters < 1:
            raise AsvpError(f"iters must be an integer >= 1, got {self.iters!r}")
        if self.iters > MAX_ITERS:
            raise AsvpError(f"iters must be <= {MAX_ITERS} (float32 converges no further beyond it), got {self.iters}")
        if self.k_mode not in K_MODES:
            raise AsvpError(f"k_mode must be one of {K_MODES}, got {self.k_mode!r}")
        if self.placement not in PLACEMENTS:
            raise AsvpError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if channels is not None and self.k >= channels:
            raise AsvpError(f"k={self.k} must be smaller than the feature's channel count ({channels})")
        self._validate_variant()
        return self

    def _validate_variant(self) -> None:
        if self.variant not in VARIANTS:
            raise AsvpError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.variant == "paper":
            extra = [f for f in ("h_max", "angle_max", "key") if getattr(self, f) is not None]
            if extra:
                raise AsvpError(f"{', '.join(extra)} only apply to the keyed variants ({', '.join(KEYED_VARIANTS)})")
            return
        if self.key is None or isinstance(self.key, bool) or not isinstance(self.key, (int, str)) or self.key == "":
            raise AsvpError(f"variant {self.variant} needs a key (a non-empty string or an integer)")
        if self.variant == "keyed-h":
            if self.angle_max is not None:
                raise AsvpError("angle_max only applies to variant keyed-rotation")
            if not (isinstance(self.h_max, (int, float)) and math.isfinite(self.h_max)) or self.h_max <= self.h:
                raise AsvpError(f"variant keyed-h needs h_max > h (= {self.h}), got {self.h_max!r}")
            if self.h_max > MAX_H:
                raise AsvpError(f"h_max must be <= {MAX_H:g}, got {self.h_max}")
        else:
            if self.h_max is not None:
                raise AsvpError("h_max only applies to variant keyed-h")
            if self.k < 2:
                raise AsvpError(f"variant keyed-rotation rotates the top directions in pairs: it needs k >= 2, got {self.k}")
            a = self.angle_max
            if a is not None and (not (isinstance(a, (int, float)) and math.isfinite(a)) or not 0 < a <= 180):
                raise AsvpError(f"angle_max must be in (0, 180] degrees, got {a!r}")

    @property
    def keyed(self) -> bool:
        return self.variant in KEYED_VARIANTS

    def to_dict(self) -> dict:
        d = asdict(self)
        del d["key"]  # the secret: never in the digest, the metadata or a report
        for name, default in _VARIANT_DEFAULTS.items():
            if d[name] == default:
                del d[name]
        return d

    def digest(self) -> str:
        """A short stable hash of the configuration, recorded in defended models' metadata."""
        canon = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def with_(self, **changes) -> "AsvpConfig":
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict) -> "AsvpConfig":
        known = {f: d[f] for f in cls.__dataclass_fields__ if f in d}
        return cls(**known)
