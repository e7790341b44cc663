"""Engine shapes and optimisation profiles (runtime.engines.shapes): parsing, defaults adapted to the model,
validation, Polygraphy's Profile; pure, on CPU."""
from __future__ import annotations

import json

import pytest

from asvp.errors import AsvpError
from asvp.runtime.engines import shapes


def test_parse_shape_and_size():
    assert shapes.parse_shape("1x3x64x64") == (1, 3, 64, 64)
    assert shapes.parse_shape(" 2,3,32,48 ") == (2, 3, 32, 48)
    assert shapes.parse_shape([1, 3, 8, 8]) == (1, 3, 8, 8)
    assert shapes.parse_shape("1x3x64") == (1, 3, 64)  # rank is checked against the model, not here
    for bad in ("", "ax3x4x4", "1x3x-4x4", "0x3x4x4", "1x3x4.5x4", [1, 3, 4.5, 4]):
        with pytest.raises(AsvpError):
            shapes.parse_shape(bad)
    assert shapes.parse_size("2G") == 2 << 30 and shapes.parse_size("512M") == 512 << 20
    assert shapes.parse_size(4096) == 4096 and shapes.parse_size("64k") == 64 << 10 and shapes.parse_size("1GiB") == 1 << 30
    for bad in ("lots", "0", "-1G"):
        with pytest.raises(AsvpError):
            shapes.parse_size(bad)


def test_profile_defaults_and_validation():
    dims = ["N", 3, "H", "W"]
    p = shapes.make_profile("img", dims)
    assert (p.min, p.opt, p.max) == ((1, 3, 32, 32), (1, 3, 256, 256), (4, 3, 512, 512))
    # defaults stretch around what is given
    q = shapes.make_profile("img", dims, max_shape="1x3x16x16")
    assert (q.min, q.opt, q.max) == ((1, 3, 16, 16),) * 3
    r = shapes.make_profile("img", dims, opt_shape="2x3x640x640")
    assert r.min == (1, 3, 32, 32) and r.max == (4, 3, 640, 640) and r.contains((2, 3, 640, 640))
    # the model's size multiple
    s = shapes.make_profile("img", dims, size_multiple=24)
    assert s.min == (1, 3, 48, 48) and s.opt == (1, 3, 264, 264) and s.max == (4, 3, 528, 528)
    with pytest.raises(AsvpError, match="multiples of 8"):
        shapes.make_profile("img", dims, min_shape="1x3x12x12", size_multiple=8)
    with pytest.raises(AsvpError, match="dimension 1 must be 3"):
        shapes.make_profile("img", dims, min_shape="1x4x32x32")
    with pytest.raises(AsvpError, match="min <= opt <= max"):
        shapes.make_profile("img", dims, min_shape="1x3x64x64", opt_shape="1x3x32x32", max_shape="1x3x128x128")
    with pytest.raises(AsvpError, match="rank 3"):
        shapes.make_profile("img", dims, max_shape="1x3x64")
    pg = p.to_polygraphy()["img"]  # Polygraphy's Profile, built without TensorRT
    assert (tuple(pg.min), tuple(pg.opt), tuple(pg.max)) == (p.min, p.opt, p.max)
    assert shapes.ShapeProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
