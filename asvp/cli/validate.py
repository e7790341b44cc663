"""`asvp validate CLEAN DEFENDED`: the defence's quality cost (PSNR/SSIM of clean vs defended) and a verdict.
`asvp validate MODEL --url URL --model NAME`: a served model against its ONNX file (asvp/cli/validate_served.py)."""
from __future__ import annotations

from asvp.cli import validate_served
from asvp.cli.args import (BackendArgs, OutputArgs, PrecisionArgs, ReportArgs, TaskArgs, ThresholdArgs,
                           add_groups)
from asvp.constants import HELDOUT_SIZE

EXIT_VERDICT_FAILED = 1  # the models ran but the defence costs more than the thresholds allow


def register(sub) -> None:
    s = sub.add_parser("validate", help="quality cost of the defence: PSNR/SSIM of clean vs defended, with a verdict",
                       description="Run CLEAN and DEFENDED on the task's held-out images (or --images DIR with "
                                   "DIR/input/NAME.png and DIR/target/NAME.png) and report PSNR/SSIM against ground "
                                   "truth, the teacher drop, the defended-vs-clean output PSNR and max abs difference "
                                   "(Polygraphy Comparator), tap feature perturbation, and a verdict. Exit status: "
                                   "0 pass, 1 verdict failed, 2 bad input, 3 backend not available.")
    s.add_argument("clean", help="clean ONNX model")
    s.add_argument("defended", nargs="?", help="defended ONNX model (asvp defend); not with --url")
    g = s.add_argument_group("images")
    TaskArgs().add(g)
    g.add_argument("--images", metavar="DIR", help="paired images DIR/input/* and DIR/target/* (default: held-out images)")
    g.add_argument("--size", type=int, default=HELDOUT_SIZE,
                   help=f"held-out crop side in target pixels (default {HELDOUT_SIZE})")
    add_groups(s, BackendArgs(), PrecisionArgs(), ThresholdArgs(), ReportArgs(), OutputArgs(),
               validate_served.ServedArgs(description=validate_served.VALIDATE_NOTE))
    s.set_defaults(func=run, parser=s)


def run(a) -> int:
    PrecisionArgs.refuse_served(a)
    if a.url or not a.defended:  # a served model against its ONNX file
        return validate_served.run(a) if a.url else a.parser.error("give DEFENDED, or --url URL --model NAME")
    from asvp import api

    res = api.validate(a.clean, a.defended, task=TaskArgs.parse(a), images=a.images, backend=BackendArgs.parse(a),
                       heldout_size=a.size, thresholds=ThresholdArgs.parse(a), out=ReportArgs.parse(a),
                       progress=OutputArgs.progress(a), precision=PrecisionArgs.parse(a))
    OutputArgs.show(a, res)
    return 0 if res.passed else EXIT_VERDICT_FAILED
