"""`asvp` command line: a thin shell over asvp.api (and asvp.demo for the main job).

One module per subcommand (asvp/cli/<name>.py, named in COMMANDS), each with `register(sub)`, which builds its
parser from the argument groups of asvp.cli.args, and `run(args)`, which imports asvp.api lazily, calls one API
function with the typed options the groups parse, and prints the result: `--json` prints its to_dict(), otherwise
its own summary_lines(). Importing this package or a command module loads no torch, onnx, onnxruntime, scipy or
Polygraphy, so `asvp --help` and `asvp COMMAND --help` start at once.

main() owns the exit status: 0 success, 1 a verdict failed (`validate`), 2 bad input (one line on stderr, no
traceback; argparse usage errors too), 3 a missing backend or optional dependency, 70 an unforeseen internal error
(one line; ASVP_TRACEBACK=1 shows the traceback), 130 interrupted.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from asvp.errors import AsvpError, first_line

# The subcommands, in the order `asvp --help` lists them: module asvp.cli.<name> for each.
COMMANDS = ("train_teacher", "eval_teachers", "export", "nodes", "node_cost", "absorbability", "defend", "validate",
            "profile", "build", "backends", "attack", "sweep", "demo", "fingerprint", "triton_repo", "serve")
EXIT_VERDICT_FAILED = 1  # `asvp validate`: the models ran but the defence costs more than the thresholds allow
EXIT_INTERNAL = 70  # an unforeseen failure (a bug): one line on stderr, EX_SOFTWARE; ASVP_TRACEBACK=1 re-raises it
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line `asvp: error: ...` (with the subcommand) and exit status 2, like
    every other bad input; `asvp COMMAND --help` still prints the usage."""

    def error(self, message):
        where = self.prog[len("asvp"):].strip()
        hint = f" (see `asvp {where + ' ' if where else ''}--help`)"
        self.exit(2, f"asvp: error: {(where + ': ') if where else ''}{message}{hint}\n")


def command_modules() -> list:
    """The subcommand modules (asvp.cli.<name> for each name in COMMANDS)."""
    return [importlib.import_module(f"asvp.cli.{name}") for name in COMMANDS]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="asvp",
        description="Ship image-restoration models protected against knowledge distillation "
                    "(Adaptive Singular Value Perturbation) as ONNX and TensorRT.",
        epilog="Typical flow: asvp export sr -o sr.onnx; asvp nodes sr.onnx; asvp defend sr.onnx -o sr.asvp.onnx; "
               "asvp validate sr.onnx sr.asvp.onnx --task sr; asvp profile sr.onnx sr.asvp.onnx")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineParser)
    for module in command_modules():
        module.register(sub)
    return p


def main(argv=None) -> int:
    from asvp.cli.nodes import redirect_legacy
    from asvp.runtime import quiet_libraries

    argv = redirect_legacy(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(argv)
    try:
        quiet_libraries()  # when a command runs: `--help` never loads Polygraphy or ONNX Runtime
        rc = args.func(args)  # None (0) or a command's own non-error status (validate: 1 = verdict failed)
    except AsvpError as exc:
        print(f"asvp: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("asvp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `asvp nodes m.onnx | head`: the reader left; not an error
        sys.stdout = open(os.devnull, "w")
        return 0
    except MemoryError:
        print("asvp: error: out of memory (the input or shape is too large for this machine; try a smaller one)",
              file=sys.stderr)
        return 2
    except OSError as exc:  # a file system refusal the checks up front could not foresee (full disk, /proc, ...)
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"asvp: error: {exc.strerror or first_line(exc)}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or an unforeseen library failure: one line; ASVP_TRACEBACK=1 shows the traceback
        if os.environ.get("ASVP_TRACEBACK"):
            raise
        print(f"asvp: error: internal error, {type(exc).__name__}: {first_line(exc)} "
              "(set ASVP_TRACEBACK=1 for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
