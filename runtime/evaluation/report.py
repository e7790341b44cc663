"""Reports for machines and people, composable across commands.

A report directory holds:

    report.json              {"asvp_version", "generated", "sections": {key: data}, "files": {key: [png, ...]}}
    report.md                "# asvp report" + every section's Markdown, in the order sections were first added
    <key>-<figure>.png       each section's plots (matplotlib, Agg; no pyplot global state)
    sections/<key>.md        each section's Markdown part, kept so that later commands can re-assemble report.md

`write_report(out_dir, {key: Section(...)})` adds or replaces the given sections and keeps the others
already in the directory: `asvp validate --out R` and `asvp profile --out R` (and the demo, and attacks)
all write into one report. Every file is written atomically (temporary file + rename).
"""
from __future__ import annotations

import datetime as _dt
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from asvp import __version__ as version
from asvp.errors import AsvpError
from asvp.io import atomic_output, check_output_dir, write_text_atomic

REPORT_JSON, REPORT_MD, PARTS_DIR = "report.json", "report.md", "sections"
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class Section:
    """One part of a report.

    title:    heading in report.md.
    data:     JSON-able dict, stored under report.json["sections"][key] (non-finite floats become "inf"/"nan").
    markdown: body in report.md (tables, notes); the figures are appended as images after it.
    figures:  name -> matplotlib Figure (or PNG bytes), saved as <key>-<name>.png.
    """

    title: str
    data: dict = field(default_factory=dict)
    markdown: str = ""
    figures: dict = field(default_factory=dict)

    @classmethod
    def coerce(cls, obj) -> "Section":
        if isinstance(obj, Section):
            return obj
        if hasattr(obj, "to_section"):
            return obj.to_section()
        if isinstance(obj, dict) and "title" in obj:
            return cls(obj["title"], obj.get("data", {}), obj.get("markdown", ""), obj.get("figures", {}))
        raise AsvpError(f"a report section must be a Section or a dict with a 'title', got {type(obj).__name__}")


def jsonable(obj):
    """A copy of obj that `json.dumps` writes as strict JSON: non-finite floats become strings."""
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:  # numpy scalar
        return jsonable(obj.item())
    if hasattr(obj, "tolist"):
        return jsonable(obj.tolist())
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def dumps(obj) -> str:
    return json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n"


def md_table(header: list, rows: list[list]) -> str:
    """A GitHub-flavoured Markdown table; floats formatted by the caller (str() otherwise)."""
    def cell(v):
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def fmt(v, spec: str = ".3f") -> str:
    """Format a number for a table; None -> '-', inf -> 'inf'."""
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return format(v, spec)


def new_figure(width: float = 6.4, height: float = 4.0):
    """A matplotlib Figure on the Agg canvas (no pyplot, no GUI backend, no global figure registry)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png_bytes(fig) -> bytes:
    if isinstance(fig, (bytes, bytearray)):
        return bytes(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _load_existing(out: Path) -> dict:
    p = out / REPORT_JSON
    if not p.exists():
        return {}
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # an unreadable old report is replaced, not merged
    return d if isinstance(d, dict) and isinstance(d.get("sections"), dict) else {}


def check_report_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse, before any work, a report folder that cannot be written or holds a report asvp did not write.

    Reports are composable by design: an existing asvp report folder gets the new sections added (the other
    sections are kept), so it needs no --force. Refused: a file in the folder's place or above it, a folder
    without write permission, and a folder holding a report.md or report.json that is not an asvp report
    (asvp would overwrite someone else's file). Creates nothing."""
    out = check_output_dir(out_dir, "report folder")
    md, js = out / REPORT_MD, out / REPORT_JSON
    if md.exists() or js.exists():
        ours = False
        try:
            d = json.loads(js.read_text())
            ours = isinstance(d, dict) and "asvp_version" in d and isinstance(d.get("sections"), dict)
        except (OSError, ValueError):
            pass
        if not ours:
            raise AsvpError(f"report folder {out} holds a {REPORT_MD if md.exists() else REPORT_JSON} that asvp did "
                            "not write; choose another --out folder")
    for name in (REPORT_MD, REPORT_JSON, PARTS_DIR):
        if (out / name).exists() and (out / name).is_dir() != (name == PARTS_DIR):
            raise AsvpError(f"report folder {out}: {name} is in the way (a {'file' if name == PARTS_DIR else 'folder'})")
    return out


def write_report(out_dir: str | os.PathLike, sections: dict, title: str = "asvp report") -> Path:
    """Add (or replace) `sections` in the report at `out_dir`; returns out_dir.

    sections: key -> Section (or a dict with title/data/markdown/figures, or an object with `to_section()`).
    Sections already in out_dir's report.json under other keys are kept, in their order; a replaced
    section keeps its place. Keys are used in file names: letters, digits, '_', '.', '-'.
    """
    parsed = {}
    for key, sec in sections.items():
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise AsvpError(f"report section key {key!r} must be letters, digits, '_', '.' or '-'")
        parsed[key] = Section.coerce(sec)
    # Render everything first: a failure here (a figure that cannot be drawn) leaves the directory untouched.
    pngs = {key: {f"{key}-{name}.png": _png_bytes(fig) for name, fig in sec.figures.items()}
            for key, sec in parsed.items()}

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise AsvpError(f"report output {out} exists and is not a directory")
    old = _load_existing(out)
    data = dict(old.get("sections", {}))
    files = {k: list(v) for k, v in old.get("files", {}).items() if k in data}
    titles = dict(old.get("titles", {}))

    for key, sec in parsed.items():
        for stale in set(files.get(key, [])) - set(pngs[key]):
            (out / stale).unlink(missing_ok=True)
        for fname, blob in pngs[key].items():
            with atomic_output(out / fname) as tmp:
                tmp.write_bytes(blob)
        md = f"## {sec.title}\n\n{sec.markdown.rstrip()}\n"
        for fname in pngs[key]:
            md += f"\n![{fname[len(key) + 1:-4]}]({fname})\n"
        write_text_atomic(out / PARTS_DIR / f"{key}.md", md)
        data[key] = sec.data
        files[key] = list(pngs[key])
        titles[key] = sec.title


    doc = {"asvp_version": version, "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "sections": data, "files": files, "titles": titles}
    parts = [f"# {title}\n\nGenerated {doc['generated']} by asvp {version}. Machine-readable: "
             f"[{REPORT_JSON}]({REPORT_JSON}).\n"]
    for key in data:
        part = out / PARTS_DIR / f"{key}.md"
        parts.append(part.read_text() if part.exists() else f"## {titles.get(key, key)}\n\n(see {REPORT_JSON})\n")
    write_text_atomic(out / REPORT_JSON, dumps(doc))
    write_text_atomic(out / REPORT_MD, "\n".join(parts))
    return out
