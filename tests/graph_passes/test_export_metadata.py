"""The export metadata's one writer and one reader (graph_passes/metadata.py): what the exporter records reads
back typed, a model without it reads as the defaults, and a size that is not an integer is a one-line error."""
from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from asvp.errors import AsvpError
from asvp.graph_passes.metadata import ExportInfo, read_export, write_export
from asvp.onnx_utils import get_metadata


def _model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, "H", "W"])
    return helper.make_model(helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "g", [x], [y]))


def test_written_export_metadata_reads_back_typed():
    m = _model()
    info = ExportInfo(teacher="EDSRLite", task="sr", scale=2, value_range="[0, 1]", layout="NCHW RGB float32",
                      size_multiple=4, min_size=24, exporter="torchscript", dynamic_dims="N,H,W")
    write_export(m, info)
    assert read_export(m) == info
    assert get_metadata(m)["asvp.size_multiple"] == "4"  # the keys the exporter has always written
    assert read_export(get_metadata(m)).task == "sr"  # a metadata dict reads the same


def test_a_model_without_export_metadata_reads_as_the_defaults():
    assert read_export(_model()) == ExportInfo() and ExportInfo().size_multiple == 1 and ExportInfo().scale is None


@pytest.mark.parametrize("key, value", [("asvp.size_multiple", "four"), ("asvp.size_multiple", "0"),
                                        ("asvp.scale", "-2"), ("asvp.min_size", "1.5")])
def test_a_size_that_is_not_a_positive_integer_is_one_line(key, value):
    with pytest.raises(AsvpError, match=f"{key} metadata is not a positive integer"):
        read_export({key: value})
