"""`asvp nodes MODEL`: list the candidate feature nodes, where ASVP can be inserted.

Its two measurements are commands of their own: `asvp node-cost` (the defence's latency cost per node) and
`asvp absorbability` (the absorbability diagnostic per node). The old spellings `asvp nodes MODEL --cost` and
`asvp nodes MODEL --absorbability` are redirected to them, with a note, for one release (redirect_legacy).
"""
from __future__ import annotations

import sys

from asvp.cli.args import OutputArgs, add_groups

RULE = ("A candidate is a node output that is (1) computed from the image input (not a weight, a constant, or "
        "something computed only from them), (2) a float tensor [N, C, H', W'] whose dim 0 is the input's batch, "
        "dim 1 a fixed channel count C >= 4, and dims 2 and 3 follow the input's height and width alone (H, 2*H, "
        "H/2, ceil(H/8)*8 for a model that pads inside, ...), (3) not a graph output, (4) not an attention input: "
        "a tensor whose every use reaches a MatMul next to a Softmax through reshapes, splits and scales (a q/k/v "
        "projection; names with 'attn', 'attention' or q/k/v projection names (qkv, to_qv) in their scope are a "
        "secondary hint), and (5) not the node producing the output image (3 channels or the output's, reaching it through elementwise or resize ops "
        "only; refused as --nodes NAME too unless --force-nodes). Attention tensors (q/k/v, scores, masks: "
        "windows, heads and tokens in their dims) and token sequences are never candidates; in a transformer the "
        "candidates are the N,C,H,W maps around its convolutions and patch (un)embedding. Dims 0, 2, 3 are checked "
        "by running the model (ONNX Runtime, CPU) on small inputs of different batch, height and width; a model "
        "exported at a fixed size (--static-size) is run at that size. An NHWC model is refused (asvp needs "
        "NCHW), and so is a model with no candidate at all, with the reason.")
LEGACY = {"--cost": "node-cost", "--absorbability": "absorbability"}  # old `asvp nodes` flags -> their commands


def register(sub) -> None:
    s = sub.add_parser("nodes", help="list candidate feature nodes where ASVP can be inserted",
                       description="List the model's spatial feature maps, where ASVP can go. " + RULE + " Grey, RGB "
                                   "and multi-channel images are accepted, and models with extra inputs (noise maps, "
                                   "masks): --input names the image when it cannot be told apart. `asvp node-cost` "
                                   "measures the defence's latency cost at each candidate, `asvp absorbability` the "
                                   "absorbability diagnostic.")
    s.add_argument("model", help="ONNX model")
    s.add_argument("--input", dest="input_name", metavar="NAME",
                   help="the image input, for models with several image-like inputs (default: detected)")
    add_groups(s, OutputArgs(quiet=False))
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api
    from asvp.graph_passes.tables import candidates_table

    nodes = api.list_nodes(a.model, input_name=a.input_name)
    OutputArgs.print_json([n.to_dict() for n in nodes]) if a.json else print(candidates_table(nodes))


def redirect_legacy(argv: list) -> list:
    """`asvp nodes MODEL --cost ...` -> `asvp node-cost MODEL ...` (and --absorbability likewise), with a note on
    stderr; both flags at once are refused in one line (exit 2). Any other command line is returned as it is."""
    if not argv or argv[0] != "nodes":
        return argv
    given = [f for f in LEGACY if f in argv]
    if not given:
        return argv
    if len(given) > 1:
        print("asvp: error: nodes: --absorbability and --cost are separate commands now: `asvp absorbability` and "
              "`asvp node-cost`; give one", file=sys.stderr)
        raise SystemExit(2)
    new = LEGACY[given[0]]
    print(f"asvp: note: `asvp nodes {given[0]}` is now `asvp {new}`; the old form goes in the next release",
          file=sys.stderr)
    return [new] + [x for x in argv[1:] if x != given[0]]
