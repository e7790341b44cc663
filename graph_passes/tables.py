"""Fixed-width tables for people (the style of `asvp nodes`), and the table of candidate feature nodes."""
from __future__ import annotations

from asvp.graph_passes.candidates import FeatureNode


def text_table(rows: list[tuple]) -> list[str]:
    """Fixed-width lines for people: the first row is the header, underlined with dashes; columns left-aligned, two
    spaces apart (the style of `asvp nodes`)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def candidates_table(nodes: list[FeatureNode]) -> str:
    """A fixed-width table for people."""
    rows = [("#", "name", "op", "output shape", "C")]
    rows += [(str(n.index), n.name, n.op_type, "[" + ", ".join(map(str, n.shape)) + "]", str(n.channels)) for n in nodes]
    return "\n".join(text_table(rows))
