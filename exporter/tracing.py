"""Tracing a PyTorch model to ONNX with torch's two exporters (TorchScript, dynamo) and naming its image input
and output; what the exporters print is silenced, and their failures are reported as one short reason.
"""
from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import onnx
import torch
from torch.export import Dim

from asvp.errors import first_line
from asvp.onnx_utils import capped_ir_version

INPUT_NAME, OUTPUT_NAME = "input", "output"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch colours some of its messages; a one-line error must not carry codes


def error_reason(exc: BaseException) -> str:
    """An exception as one short line for an error message: its type and first line, terminal colours removed."""
    return f"{type(exc).__name__}: {_ANSI.sub('', first_line(exc))}"


def _flush_c_stdio() -> None:
    """Flush the C library's stdout/stderr buffers (torch's C++ prints through them) into the current fds."""
    try:
        ctypes.CDLL(None).fflush(None)
    except Exception:  # no C library to reach (not POSIX): Python's own flushes are all there is
        pass


@contextlib.contextmanager
def _fd_captured(sink) -> Iterator[None]:
    """Send file descriptors 1 and 2 to `sink` for the block: torch's C++ side (the TorchScript exporter's "Torch
    IR graph at exception" dump, hundreds of lines) writes to them directly, past sys.stdout."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no descriptors 1/2 to redirect (a daemon): nothing reaches a terminal anyway
        yield
        return
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        _flush_c_stdio()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what the exporters print: warnings, torch's logged tracebacks of optional registrations, and what
    its C++ side writes to the process's stdout/stderr (so `asvp export --json` prints JSON only). With
    ASVP_TRACEBACK=1 (the CLI's debugging switch) what was caught goes to stderr afterwards, for diagnosis."""
    with tempfile.TemporaryFile() as sink:  # unlinked at once: nothing is left behind, even when killed
        try:
            with _fd_captured(sink), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                logging.disable(logging.CRITICAL)
                try:
                    yield
                finally:
                    logging.disable(logging.NOTSET)
        finally:
            if os.environ.get("ASVP_TRACEBACK"):
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))


def _torchscript_export(model, dummy, path: Path, opset: int, dynamic: list[str]) -> None:
    axes = {0: "N", 2: "H", 3: "W"}
    in_axes = {a: n for a, n in axes.items() if n in dynamic}
    out_axes = {a: (n if a == 0 else n + "_out") for a, n in axes.items() if n in dynamic}
    with _quiet():
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: in_axes, OUTPUT_NAME: out_axes} if in_axes else None)


def dynamo_available() -> bool:
    """Whether torch's dynamo exporter can run here (it needs the optional onnxscript package)."""
    try:
        import onnxscript  # noqa: F401  (torch's dynamo exporter builds its graph with it)
    except Exception:
        return False
    return True


def _dynamo_export(model, dummy, path: Path, opset: int, dynamic: list[str]) -> None:
    # Dim.AUTO: dynamic where the model allows it, specialised (silently) where it does not; parity then tells
    dims = {axis: Dim.AUTO for axis, name in ((0, "N"), (2, "H"), (3, "W")) if name in dynamic}
    with _quiet():
        prog = torch.onnx.export(model, (dummy,), dynamo=True, opset_version=max(opset, 18),
                                 input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                 dynamic_shapes=({k: v for k, v in dims.items()},) if dims else None,
                                 optimize=True, verbose=False, report=False)
        prog.save(str(path))


def _to_proto(path: Path) -> onnx.ModelProto:
    proto = onnx.load(str(path))
    proto.ir_version = capped_ir_version(proto, proto.ir_version)  # never below what its opset requires
    return proto


def trace_onnx(exporter: str, model, dummy: torch.Tensor, opset: int, dynamic: list[str]) -> onnx.ModelProto:
    """The model traced on `dummy` by one exporter ("torchscript" or "dynamo"), with `dynamic` (of "N", "H", "W")
    left symbolic, as a proto whose IR version ONNX Runtime reads. Raises whatever the exporter raises."""
    export = _torchscript_export if exporter == "torchscript" else _dynamo_export
    with tempfile.TemporaryDirectory() as tmpdir:  # the exporters write a file; the proto is loaded back
        raw = Path(tmpdir) / "raw.onnx"
        export(model, dummy, raw, opset, dynamic)
        return _to_proto(raw)


def rename_io(proto: onnx.ModelProto) -> None:
    """The dynamo exporter may name the graph's input/output after the forward's arguments: use input/output."""
    inits = {i.name for i in proto.graph.initializer}
    ins = [i for i in proto.graph.input if i.name not in inits]
    for vi, want in ((ins[0] if len(ins) == 1 else None, INPUT_NAME), (proto.graph.output[0], OUTPUT_NAME)):
        if vi is None or vi.name == want:
            continue
        old = vi.name
        for node in proto.graph.node:
            node.input[:] = [want if i == old else i for i in node.input]
            node.output[:] = [want if o == old else o for o in node.output]
        vi.name = want
