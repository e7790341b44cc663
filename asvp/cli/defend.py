"""`asvp defend MODEL -o OUT`: insert ASVP at feature nodes of an ONNX model."""
from __future__ import annotations

from asvp.cli.args import DefenceArgs, OutputArgs, OutputFileArgs, add_groups

DEFENCE = DefenceArgs(nodes="list", mode=True)


def register(sub) -> None:
    s = sub.add_parser(
        "defend", help="insert ASVP (singular value perturbation) at feature nodes of an ONNX model",
        description="Write a defended copy of MODEL: at each selected feature F [N,C,H,W], per sample, the top-k "
                    "singular values of F.reshape(C, H*W) are multiplied by h (k adaptive: the smallest k holding "
                    "a share tau of the energy, at most --k). --mode subgraph emits standard ONNX ops (any "
                    "runtime, TensorRT included); --mode plugin emits one AsvpPerturb custom node per feature "
                    "(exact; needs asvp's ONNX Runtime custom op or TensorRT plugin). Unset options keep "
                    "AsvpConfig's defaults.",
        epilog="Node selectors: NAME (exact node or tensor name from `asvp nodes MODEL`), re:PATTERN (every "
               "candidate whose name matches), OP#I (I-th candidate of that op type, 0-based, negative from the "
               "end, e.g. Conv#3, Relu#-1), auto (default: the last candidate with the most channels). Candidates "
               "are the model's spatial feature maps (`asvp nodes --help` states the rule); a NAME that is not one "
               "(a weight, an attention tensor) is refused unless --force-nodes.")
    s.add_argument("model", help="ONNX image model (e.g. from `asvp export`)")
    add_groups(s, OutputFileArgs("defended .onnx path"), DEFENCE)
    s.add_argument("--allow-redefend", action="store_true", help="allow perturbing a node that is already defended")
    s.add_argument("--input", dest="input_name", metavar="NAME",
                   help="the image input, for models with several image-like inputs (default: detected)")
    s.add_argument("--force-nodes", action="store_true",
                   help="experts: take a --nodes NAME that is not a feature map (rank 4, fixed C) instead of refusing it")
    add_groups(s, OutputArgs(quiet=False, json_help="machine-readable result"))
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api

    out = OutputFileArgs.parse(a)
    OutputArgs.show(a, api.defend(a.model, out.path, nodes=a.nodes, config=DEFENCE.parse(a), mode=a.mode,
                                  allow_redefend=a.allow_redefend, force=out.force, input_name=a.input_name,
                                  force_nodes=a.force_nodes))
