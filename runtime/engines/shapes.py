"""Engine input shapes and TensorRT optimisation profiles: parsing, defaults, validation (pure: needs neither
TensorRT nor a GPU).

    make_profile("img", ["N", 3, "H", "W"], max_shape="2x3x64x64")  # min/opt/max, defaults adapted to the model

`parse_shape` is asvp's one parser of shape text ('1x3x64x64'): engine profiles, `--shape`
(runtime.evaluation.timing.check_shape) and the GPU benchmarks all go through it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asvp.constants import ENGINE_MAX_SHAPE as DEFAULT_MAX, ENGINE_MIN_SHAPE as DEFAULT_MIN
from asvp.constants import ENGINE_OPT_SHAPE as DEFAULT_OPT
from asvp.errors import AsvpError

if TYPE_CHECKING:  # annotations only: shape parsing should not pay for importing onnx
    import onnx


def parse_shape(value, what: str = "shape", rank: int | None = None) -> tuple[int, ...]:
    """'1x3x64x64' (or '1,3,64,64', or a sequence of ints) -> (1, 3, 64, 64); every dimension must be >= 1.

    rank: the number of dimensions required (4: an image batch NxCxHxW, as `--shape` takes); None: any (an engine
    profile's rank is checked against its model)."""
    try:
        dims = _shape_dims(value, what)
    except AsvpError:
        if rank == 4:
            raise AsvpError(f"{what} must be NxCxHxW with integers, e.g. 1x3x256x256; got {value!r}") from None
        raise
    if rank == 4 and len(dims) != 4:
        raise AsvpError(f"{what} must be four positive integers NxCxHxW, e.g. 1x3x256x256; got {value!r}")
    if rank is not None and len(dims) != rank:
        raise AsvpError(f"{what} {value!r} must have {rank} dimensions")
    return dims


def _shape_dims(value, what: str) -> tuple[int, ...]:
    """The dims of shape text or an int sequence, any rank; each must be an integer >= 1."""
    if isinstance(value, str):
        text = value.strip().lower()
        if not re.fullmatch(r"\d+([x,]\d+)*", text):
            raise AsvpError(f"{what} {value!r} is not a shape like 1x3x64x64")
        dims = tuple(int(d) for d in re.split(r"[x,]", text))
    else:
        try:
            dims = tuple(int(d) for d in value)
        except (TypeError, ValueError):
            raise AsvpError(f"{what} {value!r} is not a shape like 1x3x64x64") from None
        if any(int(d) != d for d in value):
            raise AsvpError(f"{what} {value!r} must contain integers")
    if not dims or any(d < 1 for d in dims):
        raise AsvpError(f"{what} {value!r}: every dimension must be >= 1")
    return dims


def format_shape(dims) -> str:
    """(1, 3, 64, 64) -> '1x3x64x64', the form parse_shape reads back."""
    return "x".join(str(int(d)) for d in dims)


def parse_size(value) -> int:
    """Bytes from 1073741824, '1G', '512M', '64k' (binary units); must be > 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(value).lower())
        if not m:
            raise AsvpError(f"size {value!r} is not a byte count like 1073741824, 512M or 2G")
        n = int(float(m.group(1)) * (1 << (10 * " kmgt".index(m.group(2) or " "))))
    if n <= 0:
        raise AsvpError(f"size {value!r} must be > 0")
    return n


@dataclass(frozen=True)
class ShapeProfile:
    """One TensorRT optimisation profile for the model's image input."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, d: dict) -> "ShapeProfile":
        return cls(d["input"], tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))

    def contains(self, shape) -> bool:
        shape = tuple(shape)
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def to_polygraphy(self):
        """polygraphy.backend.trt.Profile (constructing it does not need TensorRT)."""
        from polygraphy.backend.trt import Profile

        return Profile().add(self.input, min=list(self.min), opt=list(self.opt), max=list(self.max))


def _round_up(x: int, m: int) -> int:
    """The smallest multiple of m that is >= x."""
    return -(-x // m) * m


def make_profile(input_name: str, input_dims, min_shape=None, opt_shape=None, max_shape=None,
                 size_multiple: int = 1) -> ShapeProfile:
    """Validated min/opt/max for an NCHW input whose ONNX dims are `input_dims` (ints or symbolic strings).

    Shapes not given default to 1x3x32x32 / 1x3x256x256 / 4x3x512x512 with the model's static dimensions
    (e.g. C=3) filled in and H, W rounded up to the model's size multiple; opt defaults to fit between min and max.
    """
    dims = list(input_dims)
    if len(dims) != 4:
        raise AsvpError(f"input {input_name!r} has rank {len(dims)}; asvp builds engines for NCHW images")
    size_multiple = max(1, int(size_multiple))

    def default(base):
        out = []
        for i, b in enumerate(base):
            if isinstance(dims[i], int) and dims[i] > 0:
                out.append(dims[i])
            else:
                out.append(_round_up(b, size_multiple) if i >= 2 else b)
        return tuple(out)

    mn_u = parse_shape(min_shape, "min shape") if min_shape is not None else None
    op_u = parse_shape(opt_shape, "opt shape") if opt_shape is not None else None
    mx_u = parse_shape(max_shape, "max shape") if max_shape is not None else None
    for label, given in (("min", mn_u), ("opt", op_u), ("max", mx_u)):
        if given is not None and len(given) != 4:
            raise AsvpError(f"{label} shape {format_shape(given)} has rank {len(given)}; the input "
                            f"{input_name!r} is NCHW (rank 4)")
    given = [g for g in (mn_u, op_u, mx_u) if g is not None]
    # Defaults stretch to stay consistent with whatever was given (e.g. --max below the default min).
    mn = mn_u or tuple(min([d, *(g[i] for g in given)]) for i, d in enumerate(default(DEFAULT_MIN)))
    mx = mx_u or tuple(max([d, *(g[i] for g in given)]) for i, d in enumerate(default(DEFAULT_MAX)))
    op = op_u or tuple(min(max(d, lo), hi) for d, lo, hi in zip(default(DEFAULT_OPT), mn, mx))
    prof = ShapeProfile(input_name, mn, op, mx)
    check_profile(prof, dims, size_multiple)
    return prof


def check_profile(prof: ShapeProfile, input_dims, size_multiple: int = 1) -> None:
    """Refuse, in one line, a profile TensorRT would reject or the model cannot run: wrong rank, a static
    dimension changed, H/W off the model's size multiple, or min <= opt <= max broken in some dimension."""
    for label, shape in (("min", prof.min), ("opt", prof.opt), ("max", prof.max)):
        if len(shape) != len(input_dims):
            raise AsvpError(f"{label} shape {format_shape(shape)} has rank {len(shape)}, but input "
                            f"{prof.input!r} has rank {len(input_dims)}")
        for i, (s, d) in enumerate(zip(shape, input_dims)):
            if isinstance(d, int) and d > 0 and s != d:
                raise AsvpError(f"{label} shape {format_shape(shape)}: dimension {i} must be {d} "
                                f"(static in the model)")
        if size_multiple > 1 and any(s % size_multiple for s in shape[2:]):
            raise AsvpError(f"{label} shape {format_shape(shape)}: H and W must be multiples of {size_multiple} "
                            "for this model")
    for i in range(len(prof.min)):
        if not prof.min[i] <= prof.opt[i] <= prof.max[i]:
            raise AsvpError(f"profile needs min <= opt <= max in every dimension; dimension {i} has "
                            f"{prof.min[i]}, {prof.opt[i]}, {prof.max[i]}")


def profile_for_shape(input_name: str, shape) -> ShapeProfile:
    """A profile fixed at one shape (min = opt = max)."""
    shape = parse_shape(shape, "input shape")
    return ShapeProfile(input_name, shape, shape, shape)


def onnx_input_dims(model: onnx.ModelProto, name: str) -> list:
    """The ONNX dims of input `name`: ints where static, the symbolic name (or '?') where dynamic."""
    inp = next(i for i in model.graph.input if i.name == name)
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in inp.type.tensor_type.shape.dim]
