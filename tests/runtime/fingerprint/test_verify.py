"""Verification (runtime/fingerprint/verifier.py, calibration.py): the verdict flips on the planted case, the key
matters, the one-pass path equals verify, and reference bias is removed and cached."""
import pytest
import torch

from asvp import api
from asvp.errors import AsvpError
from asvp.runtime.fingerprint.probes import as_suspect
from asvp.runtime.fingerprint.verifier import Verifier
from asvp.tasks import get_task
from asvp.tasks.data import TRAIN_IMAGES, random_crops

KEY_A = "test-key-alpha-0001"  # the keys of conftest's marked models
KEY_B = "test-key-bravo-0002"


def _ground_truth_model():
    """An independently trained model (never saw any teacher): a tiny EDSR fit to ground truth for a few steps."""
    spec = get_task("sr")
    torch.manual_seed(3)
    net = spec.build().eval()
    g = torch.Generator().manual_seed(5)
    x, y = spec.make_pair(random_crops(TRAIN_IMAGES, 8, 32, g), g)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(10):
        loss = torch.nn.functional.l1_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def fn(batch):
        with torch.no_grad():
            return net(torch.from_numpy(batch)).numpy()
    return fn



@pytest.mark.slow
def test_verdict_flips_on_the_planted_case(models):
    c, a = models["clean"], models["A"]
    hit = api.fingerprint_verify(a, clean=c, defended=a, key=KEY_A)
    assert hit.flagged and hit.p_value < 1e-9 and hit.statistic > 0.9 and 0.9 < hit.beta < 1.1
    for name, suspect in (("ground truth", _ground_truth_model()),
                          ("bicubic", lambda b: get_task("sr").baseline_output(torch.from_numpy(b)).numpy())):
        miss = api.fingerprint_verify(suspect, clean=c, defended=a, key=KEY_A, name=name)
        assert not miss.flagged and miss.p_value > 0.01, (name, miss.p_value)
    same = api.fingerprint_verify(c, clean=c, defended=a, key=KEY_A)
    assert not same.flagged and same.p_value == 1.0



def test_the_key_changes_the_verdict(models):
    c, a, b = models["clean"], models["A"], models["B"]
    # the model marked with key A, tested as a suspect by the owner of key B: not flagged
    other = api.fingerprint_verify(a, clean=c, defended=b, key=KEY_B)
    assert not other.flagged and other.p_value > 0.01
    assert api.fingerprint_verify(b, clean=c, defended=b, key=KEY_B).flagged
    with pytest.raises(AsvpError, match="key does not reproduce the mark"):
        api.fingerprint_verify(a, clean=c, defended=a, key=KEY_B)



def test_one_pass_verdict_equals_verify(models):
    """Benchmarks check the key once and test each suspect on its one pass over the probes (check_key, query,
    result): the same verdict as verify; a wrong key fails the check itself."""
    c, a = models["clean"], models["A"]
    v = Verifier.open(c, a, task="sr")
    bicubic = lambda b: get_task("sr").baseline_output(torch.from_numpy(b)).numpy()  # noqa: E731
    u, key_check = v.check_key(KEY_A)
    for suspect, name in ((a, "marked"), (bicubic, "bicubic")):
        full = v.verify(suspect, KEY_A, name=name)
        fn = as_suspect(suspect)[0]
        one = v.result(v.query(fn, name), name, KEY_A, u, key_check)
        assert (one.statistic, one.p_value, one.flagged, one.beta, one.key_check) == \
               (full.statistic, full.p_value, full.flagged, full.beta, full.key_check)
    assert v.result(v.query(as_suspect(a)[0], "marked"), "marked", KEY_A, u, key_check).flagged
    with pytest.raises(AsvpError, match="key does not reproduce the mark"):
        v.check_key(KEY_B)



@pytest.mark.slow
def test_reference_bias_is_removed_and_cached(models, tmp_path):
    c, a = models["clean"], models["A"]
    bias = lambda b: get_task("sr").baseline_output(torch.from_numpy(b)).numpy()  # noqa: E731
    cal = api.fingerprint_calibrate(c, a, cache=tmp_path, seeds=(), references=[bias], progress=False)
    assert len(cal.references) == 1 and list(tmp_path.glob("fingerprint-references-*.npz"))
    res = api.fingerprint_verify(a, clean=c, defended=a, key=KEY_A, cache=tmp_path)
    assert res.references and res.flagged
    # the reference itself, tested against its own bias direction, carries no mark at all
    same = api.fingerprint_verify(bias, clean=c, defended=a, key=KEY_A, cache=tmp_path, name="other")
    assert same.references and abs(same.statistic) < 1e-6
