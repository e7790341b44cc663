"""graph_passes.mark: where the mark goes by default."""
import onnx
import pytest

from asvp.errors import AsvpError
from asvp.graph_passes import select
from asvp.graph_passes.mark import default_feature, resolve_feature


@pytest.mark.parametrize("task, expected", [("sr", "/Add"), ("lowlight", "/dec1/dec1.1/Relu"), ("dehaze", "/Concat_2")])
def test_default_mark_node_is_the_deepest_feature_with_2m_channels(exported, task, expected):
    model = onnx.load(exported(task))
    feat = default_feature(model, 8)
    assert feat.name == expected and feat.channels >= 16
    later = select.candidates(model)[[c.name for c in select.candidates(model)].index(expected) + 1:]
    assert all(c.channels < 16 for c in later)  # nothing nearer the output is wide enough (sr: the C = 12 upsampler)
    assert resolve_feature(model, None, 8).name == expected
    # an explicit selector is defend's: `auto` is its automatic node (lowlight: the bottleneck, not the default)
    assert resolve_feature(model, "auto").name == select.resolve(model, ["auto"])[0].name


def test_without_a_wide_enough_feature_the_widest_last_one_is_taken(exported):
    model = onnx.load(exported("sr"))
    feat = default_feature(model, 64)  # no candidate has 128 channels
    assert feat.channels == max(c.channels for c in select.candidates(model)) and feat.name == "/Add"
    with pytest.raises(AsvpError, match="exactly one"):
        resolve_feature(model, "re:Conv")
