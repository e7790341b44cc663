"""asvp/config.py: AsvpConfig's fields, digest and validation, for the paper's ASVP and the keyed variants."""
from __future__ import annotations

import hashlib
import json

import pytest

from asvp.config import AsvpConfig
from asvp.errors import AsvpError

KEYED_H = AsvpConfig(variant="keyed-h", h=1.0, h_max=1.5, key="k1", placement="inline")


def test_defaults_keep_the_old_dict_and_digest():
    """A configuration without a variant has exactly the fields (and so the digest) it had before variants existed:
    cached attack results and defended models' metadata stay valid."""
    cfg = AsvpConfig()
    assert set(cfg.to_dict()) == {"h", "k", "k_mode", "tau", "iters", "placement"}
    canon = json.dumps({"h": 1.5, "k": 4, "k_mode": "adaptive", "tau": 0.9, "iters": 4, "placement": "tap"},
                       sort_keys=True, separators=(",", ":"))
    assert cfg.digest() == hashlib.sha256(canon.encode()).hexdigest()[:16]


def test_key_is_never_written():
    d = KEYED_H.to_dict()
    assert "key" not in d and d["variant"] == "keyed-h" and d["h_max"] == 1.5
    assert KEYED_H.digest() == KEYED_H.with_(key="another").digest()
    assert "k1" not in repr(KEYED_H)
    back = AsvpConfig.from_dict(d)
    assert back.variant == "keyed-h" and back.key is None


@pytest.mark.parametrize("changes,msg", [
    (dict(variant="nope"), "variant must be one of"),
    (dict(variant="keyed-h", h_max=2.0), "needs a key"),
    (dict(variant="keyed-h", key="x"), "h_max > h"),
    (dict(variant="keyed-h", key="x", h_max=1.2, h=1.5), "h_max > h"),
    (dict(variant="keyed-rotation", key="x", angle_max=0.0), "angle_max must be in"),
    (dict(variant="keyed-rotation", key="x", h_max=2.0), "h_max only applies"),
    (dict(variant="keyed-rotation", key="x", k=1), "needs k >= 2"),
    (dict(h_max=2.0), "only apply to the keyed variants"),
    (dict(key="x"), "only apply to the keyed variants"),
])
def test_bad_variant_settings(changes, msg):
    with pytest.raises(AsvpError, match=msg):
        AsvpConfig().with_(**changes).validate()
