"""Rendering an attack's results: the Markdown table, the drops figure and the report's text."""
from __future__ import annotations

import numpy as np

from asvp.runtime.attacks.claims import TEACHER_DROP_LIMIT_DB, claims_text, paired_drop_of
from asvp.runtime.evaluation.report import fmt, md_table, new_figure


def markdown_table(rows: list[dict]) -> str:
    """One row per task: teachers, students, drops, seed spread (and adaptive and paired columns when present)."""
    has_ad = any("adaptive" in r["students"] for r in rows)
    header = ["task", "placement", "kind", "teacher clean PSNR/SSIM", "teacher defended PSNR/SSIM", "teacher drop dB",
              "student<-clean PSNR/SSIM", "student<-defended PSNR/SSIM", "student drop dB", "student SSIM drop %",
              "seed spread dB (3 seeds)"]
    if has_ad:
        header[10:10] = ["student<-defended, adaptive PSNR/SSIM", "adaptive drop dB"]
    has_paired = any(paired_drop_of(r, "student") for r in rows)
    if has_paired:
        header.append("paired student drop dB (mean [95% CI], n)")
        if has_ad:
            header.append("paired adaptive drop dB (mean [95% CI], n)")
    body = []
    for r in rows:
        t, s, d = r["teacher"], r["students"], r["drops"]
        ps = lambda m: f"{m['psnr']:.2f} / {m['ssim']:.4f}"  # noqa: E731
        row = [r["task"], r["placement"], r["kind"], ps(t["clean"]), ps(t["defended"]), fmt(d["teacher"]["db"], "+.3f"),
               ps(s["clean"]), ps(s["defended"]), fmt(d["student"]["db"], "+.2f"), fmt(d["student"]["ssim_pct"], "+.1f"),
               fmt(r["seed_noise_db"], ".2f")]
        if has_ad:
            row[10:10] = [ps(s["adaptive"]) if "adaptive" in s else "-",
                        fmt(d["student_adaptive"]["db"], "+.2f") if "student_adaptive" in d else "-"]
        if has_paired:
            row.append(ci_cell(paired_drop_of(r, "student")))
            if has_ad:
                row.append(ci_cell(paired_drop_of(r, "student_adaptive")))
        body.append(row)
    return md_table(header, body)


def ci_cell(p: dict | None) -> str:
    """A paired drop as one table cell: mean [interval] n, and whether it counts."""
    if p is None:
        return "-"
    return (f"{p['mean']:+.2f} [{p['ci_low']:+.2f}, {p['ci_high']:+.2f}] n={p['n']}"
            + (" counts" if p["counts"] else ""))


def bar_figure(rows: list[dict]):
    """PSNR and SSIM drops per task (teacher, student, adaptive student) with the noise margin."""
    fig = new_figure(max(6.4, 1.6 * len(rows) + 2), 4.2)
    ax1, ax2 = fig.subplots(1, 2)
    x = np.arange(len(rows))
    bars = [("teacher", "teacher"), ("student", "student")]
    if any("student_adaptive" in r["drops"] for r in rows):
        bars.append(("student_adaptive", "student (adaptive)"))
    w = 0.8 / len(bars)
    for i, (key, label) in enumerate(bars):
        db = [r["drops"].get(key, {}).get("db", np.nan) for r in rows]
        pct = [r["drops"].get(key, {}).get("ssim_pct", np.nan) for r in rows]
        ax1.bar(x + (i - (len(bars) - 1) / 2) * w, db, w, label=label)
        ax2.bar(x + (i - (len(bars) - 1) / 2) * w, pct, w, label=label)
    noise = [r["noise_margin_db"] for r in rows]
    ax1.scatter(x, noise, marker="_", s=400, color="k", label="noise margin", zorder=3)
    for ax, yl in ((ax1, "PSNR drop (dB)"), (ax2, "SSIM drop (%)")):
        ax.set_xticks(x, [r["task"] for r in rows])
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel(yl)
        ax.grid(True, axis="y", alpha=0.3)
    ax1.axhline(TEACHER_DROP_LIMIT_DB, color="tab:blue", lw=0.8, ls=":")
    ax1.legend(fontsize=7)
    fig.suptitle(f"Distillation attack ({rows[0]['kind']}): drops from clean to defended teacher", fontsize=9)
    return fig



def attack_markdown(preset, seed: int, seeds: int, interval: str, kind: str, rows: list[dict], skipped: list[dict],
                    claims: list[dict]) -> str:
    """The report section's text: the recipe, the table, skipped tasks and the paper's claims as measured."""
    p = preset
    return (f"Preset `{p.name}` (queries {p.pool} x crop {p.crop}, {p.train.steps} steps x batch {p.train.batch}), "
            f"seed {seed}" + (f" (paired seeds {seed}..{seed + seeds - 1}, {interval} intervals)" if seeds > 1 else "")
            + f", kind `{kind}`. Teachers are queried through ONNX Runtime only; students never see ground "
            f"truth; PSNR/SSIM on held-out images. Drops = clean-teacher value - defended-teacher value.\n\n"
            + markdown_table(rows)
            + "".join(f"\nSkipped {s['task']}: {s['reason']}.\n" for s in skipped)
            + "\n### Paper's claims, as measured here\n\n" + claims_text(claims) + "\n")
