"""`asvp fingerprint ACTION`: the keyed distillation fingerprint (keygen, mark, calibrate, verify)."""
from __future__ import annotations

from asvp.cli import validate_served
from asvp.cli.args import KeyArgs, OutputArgs, OutputFileArgs, TaskArgs, add_groups
from asvp.constants import (FINGERPRINT_ALPHA, FINGERPRINT_M, FINGERPRINT_MAX_DROP_DB, REFERENCE_POOL,
                            REFERENCE_SEEDS, REFERENCE_STEPS)

KEY = KeyArgs()
TEST_KEY = KeyArgs("optional: the key, to test each reference against the others' bias", required=False)
FROM_MODELS = "default: from the models' metadata"


def register(sub) -> None:
    s = sub.add_parser("fingerprint", help="keyed distillation fingerprint: mark a served model, test a suspect",
                       description="Mark the model you serve with a secret key (a small keyed perturbation inside the "
                                   "dominant subspace of one feature; the outputs carry it), then test whether a "
                                   "suspect model was distilled from it. The p-value is exact: under 'the suspect "
                                   "never saw the marked outputs' the key is independent of the suspect. "
                                   "docs/fingerprint.md has the design and what it detects.")
    fs = s.add_subparsers(dest="fingerprint_command", metavar="ACTION", required=True)
    fs.add_parser("keygen", help="print a new random key (128 bits)").set_defaults(func=run_keygen)
    _register_mark(fs)
    _register_calibrate(fs)
    _register_verify(fs)


def _register_mark(fs) -> None:
    m = fs.add_parser("mark", help="write a marked copy of a clean or ASVP-defended model")
    m.add_argument("model", help="ONNX model to mark (the one you serve)")
    add_groups(m, OutputFileArgs("marked ONNX model", force_help=None), KEY)
    m.add_argument("--node", help="feature node selector (as for `asvp defend --nodes`; `auto` is defend's automatic "
                   "node). Default: the candidate closest to the output with at least 2m channels (why: "
                   "docs/fingerprint.md)")
    m.add_argument("--m", type=int, default=FINGERPRINT_M, help=f"principal directions the mark acts in "
                   f"(key dimensions m(m+1)/2; default {FINGERPRINT_M})")
    m.add_argument("--max-drop", type=float, default=FINGERPRINT_MAX_DROP_DB,
                   help=f"the teacher's budget: held-out PSNR in dB the mark may cost (default "
                        f"{FINGERPRINT_MAX_DROP_DB:g}); the mark is calibrated to a share of it on training-image "
                        "crops of the task, the rest is the margin for other images. What a larger budget buys: "
                        "docs/fingerprint.md")
    m.add_argument("--strength", type=float, default=None,
                   help="instead of --max-drop: a fixed PSNR in dB between the marked and the unmarked output on the "
                        "probes (higher = weaker mark, cheaper for the teacher; no cost calibration)")
    m.add_argument("--bias-students", type=int, default=0, metavar="N",
                   help=f"train N quick students of the model ({REFERENCE_POOL} queries, {REFERENCE_STEPS} steps "
                        "each) and keep the key in the half of the key directions along which they deviate least "
                        "from it, where a weakly trained copy's own errors hide the mark least. Key-free: the p-value "
                        "stays exact. When it helps: docs/fingerprint.md. Default 0 (off)")
    TaskArgs("task of the model:", note="default: from its metadata").add(m)
    add_groups(m, OutputArgs(quiet=True))
    m.set_defaults(func=run_mark)


def _register_calibrate(fs) -> None:
    c = fs.add_parser("calibrate", help="train reference students of the clean teacher and store them in --cache")
    c.add_argument("--clean", required=True, help="the clean model (before marking)")
    c.add_argument("--defended", required=True, help="the marked model")
    c.add_argument("--cache", required=True, metavar="DIR", help="where reference projections are stored")
    TaskArgs("task:", note=FROM_MODELS).add(c)
    c.add_argument("--seeds", type=int, nargs="*", default=list(REFERENCE_SEEDS),
                   help=f"reference student seeds (default {' '.join(map(str, REFERENCE_SEEDS))})")
    c.add_argument("--steps", type=int, default=REFERENCE_STEPS,
                   help=f"training steps per reference student (default {REFERENCE_STEPS})")
    c.add_argument("--pool", type=int, default=REFERENCE_POOL,
                   help=f"queries per reference student (default {REFERENCE_POOL})")
    c.add_argument("--reference", action="append", metavar="ONNX", help="another reference model (repeatable)")
    add_groups(c, TEST_KEY, OutputArgs())
    c.set_defaults(func=run_calibrate)


def _register_verify(fs) -> None:
    v = fs.add_parser("verify", help="test whether SUSPECT was distilled from the marked model",
                      description="Queries SUSPECT (an ONNX model, black box) on probe images and prints the statistic, "
                                  "the exact p-value and the verdict (flagged when p < --alpha).")
    v.add_argument("suspect", nargs="?", help="suspect ONNX model (or --url URL --model NAME: a served suspect)")
    v.add_argument("--clean", required=True, help="your clean model (before marking)")
    v.add_argument("--defended", required=True, help="your marked model")
    add_groups(v, KEY)
    v.add_argument("--alpha", type=float, default=FINGERPRINT_ALPHA,
                   help=f"significance level (default {FINGERPRINT_ALPHA:g})")
    v.add_argument("--cache", metavar="DIR", help="reuse basis responses and the reference models stored by calibrate")
    v.add_argument("--reference", action="append", metavar="ONNX",
                   help="a reference model that never saw the marked outputs (repeatable)")
    TaskArgs("task:", note=FROM_MODELS).add(v)
    add_groups(v, OutputArgs(quiet=False), validate_served.ServedArgs(shapes=False))
    v.set_defaults(func=run_verify, parser=v)


def run_keygen(a) -> None:
    from asvp import api

    print(api.fingerprint_new_key())


def run_mark(a) -> None:
    from asvp import api

    OutputArgs.show(a, api.fingerprint_mark(a.model, OutputFileArgs.parse(a).path, KEY.parse(a), node=a.node, m=a.m,
                                            strength_db=a.strength, max_drop_db=a.max_drop, task=TaskArgs.parse(a),
                                            bias_students=a.bias_students, progress=OutputArgs.progress(a)))


def run_calibrate(a) -> None:
    from asvp import api

    OutputArgs.show(a, api.fingerprint_calibrate(a.clean, a.defended, cache=a.cache, task=TaskArgs.parse(a),
                                                 seeds=tuple(a.seeds), steps=a.steps, pool=a.pool,
                                                 references=a.reference, test_key=TEST_KEY.parse(a),
                                                 progress=OutputArgs.progress(a)))


def run_verify(a) -> None:
    if bool(a.url) == bool(a.suspect):
        a.parser.error("give SUSPECT (an ONNX file) or --url URL --model NAME (a served suspect), not both")
    from asvp import api

    kw = dict(clean=a.clean, defended=a.defended, key=KEY.parse(a), alpha=a.alpha, cache=a.cache,
              task=TaskArgs.parse(a), references=a.reference)
    OutputArgs.show(a, api.fingerprint_verify_served(validate_served.ServedArgs.parse(a), **kw) if a.url
                    else api.fingerprint_verify(a.suspect, **kw))
