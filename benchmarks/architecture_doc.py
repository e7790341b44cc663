"""docs/architectures.md from the rows of benchmarks/architectures.py, and back: the table, its notes, and the
columns a fresh run must reproduce (what tests/exporter/test_architecture_table.py compares)."""
from __future__ import annotations

import re

from asvp.exporter.parity import PARITY_ATOL

from benchmarks import provenance, tiny_architectures

DOC = provenance.ROOT / "docs" / "architectures.md"
COMMAND = "python -m benchmarks.architectures"
# The columns that do not depend on timing or floating-point noise: the doc must match a fresh run on these.
DETERMINISTIC = ("architecture", "exporter", "dynamic", "flags", "patch", "candidates", "automatic")


def row_ok(row: dict) -> bool:
    return row["error"] is None and row["tap"] and row["inline"] and row["parity"] is not None and \
        row["parity"] <= max(PARITY_ATOL, row["tolerance"])


HEADER = ("| architecture | issue | exporter | dynamic dims | flags needed | patch | candidates | automatic node | "
          "parity at the new sizes | tap | inline |")


def table_line(row: dict) -> str:
    parity = "-" if row["parity"] is None else \
        f"{row['parity']:.1e} at {', '.join('x'.join(map(str, s)) for s in row['parity_sizes'])}"
    yes = {True: "ok", False: "fails"}
    return (f"| {row['architecture']} | {row['issue']} | {row['exporter']} | {row['dynamic']} | {row['flags']} | "
            f"{row['patch']} | {row['candidates']} | `{row['automatic']}` | {parity} | {yes[row['tap']]} | "
            f"{yes[row['inline']]} |")


def doc_rows(text: str) -> list[dict]:
    """The table's rows as the doc shows them, on the DETERMINISTIC columns (what the CI test compares)."""
    cells = [HEADER.strip("| ").split(" | ")]
    out = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith(HEADER) and not line.startswith("|--"):
            vals = [c.strip().strip("`") for c in line.strip("| ").split(" | ")]
            named = dict(zip(cells[0], vals))
            out.append({"architecture": named["architecture"], "exporter": named["exporter"],
                        "dynamic": named["dynamic dims"], "flags": named["flags needed"], "patch": named["patch"],
                        "candidates": int(named["candidates"]), "automatic": named["automatic node"]})
    return out


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in DETERMINISTIC} for r in rows]


ATTENTION_NAMES = re.compile(r"qkv|to_q|to_k|to_v|/q_|/k_|/v_", re.I)


def defects_seen(row: dict) -> list[str]:
    """What a passing row still shows of issue 27's defects, as facts of this run."""
    out = []
    if row.get("export_stdout_lines"):
        out.append(f"`asvp export` printed {row['export_stdout_lines']} lines on stdout (item 1)")
    if ATTENTION_NAMES.search(row["automatic"]):
        out.append(f"the automatic node `{row['automatic']}` is named like an attention projection (item 4)")
    return out


def surprises(rows: list[dict]) -> list[str]:
    """Rows that disagree with tiny_architectures.BLOCKED: a blocked one that passes, another that fails."""
    return [f"{r['architecture']} passes now: remove it from tiny_architectures.BLOCKED" if row_ok(r)
            else f"{r['architecture']} fails: {r['error'] or 'see the row'}" for r in rows
            if row_ok(r) == (r["architecture"] in tiny_architectures.BLOCKED)]


def render(results: dict) -> str:
    rows = results["rows"]
    failed = [r for r in rows if not row_ok(r)]
    lines = [
        "# Third-party architectures",
        "",
        "Every restorer asvp has been tried on (spandrel architectures), end to end, as a user would: `asvp export "
        "x.pth`, `asvp nodes`, `asvp defend` with tap and with inline placement, and parity with torch at two sizes "
        "the export never traced. The weights are random and the configurations the smallest that still exercise "
        "each architecture (one block per stage, windows of 4, widths 8-16 where the architecture allows: DAT and RGT "
        "need 32, SCUNet 64, RealCUGAN's are fixed; "
        "[benchmarks/tiny_architectures.py](../benchmarks/tiny_architectures.py)); nothing is downloaded. CI runs "
        "the same rows (`tests/exporter/test_architecture_table.py`) and fails when this page no longer matches them "
        "on the columns from *architecture* to *automatic node*.",
        "",
        "- **exporter**: the one whose parity held (`auto` tries TorchScript, then dynamo). **dynamic dims**: the "
        "ONNX input's dynamic dimensions. **flags needed**: the options `asvp export` asked for before it succeeded "
        "(`-`: none); for the architectures known to need one (`FLAGS` in tiny_architectures.py) each run retries "
        "TorchScript without it, and takes dynamo's need from the pass that filed issue 27. **patch**: the export's "
        "`asvp.export_patch` metadata, the patch that kept a dimension dynamic (`-`: none).",
        "- **candidates**: `asvp nodes`' count; **automatic node**: what `asvp defend` picks without `--nodes`.",
        "- **parity**: max |ONNX Runtime - torch| on photographs at the two new sizes (the second at batch 2 when the "
        "batch is dynamic); the export's own tolerance is 1e-4. **tap** / **inline**: the defended model runs at the "
        "second size; tap leaves the output bit-identical, inline stays finite.",
        "",
        HEADER,
        "|" + "---|" * HEADER.count(" | ") + "---|",
        *[table_line(r) for r in rows],
        "",
    ]
    if failed:
        lines += ["Rows that did not pass, and where they stopped:", "",
                  *[f"- {r['architecture']}: {r['error'] or 'see the row'}"
                    + (f" (waits for issue {tiny_architectures.BLOCKED[r['architecture']]})"
                       if r["architecture"] in tiny_architectures.BLOCKED else "") for r in failed], ""]
    seen = [f"- {r['architecture']}: {what}" for r in rows for what in defects_seen(r)]
    if seen:
        lines += ["Open defects these rows show (issue 27):", "", *seen, ""]
    lines += [f"Reproduce (rewrites this page and `benchmarks/results/architectures.json`; the run that wrote it took "
              f"{results['seconds']:.0f} s with {results['jobs']} worker processes on a shared 2-core machine, commit "
              f"{results['commit']}):", "", "```", COMMAND, "```", ""]
    return "\n".join(lines)
