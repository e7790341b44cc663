"""`asvp eval-teachers`: held-out PSNR/SSIM of the bundled teachers against their trivial baselines."""
from __future__ import annotations

from asvp.cli.args import OutputArgs, TaskArgs, add_groups


def register(sub) -> None:
    s = sub.add_parser("eval-teachers", help="held-out PSNR/SSIM of the bundled teachers vs trivial baselines")
    add_groups(s, TaskArgs("limit to", note="default: every task", repeat=True), OutputArgs(quiet=False))
    s.set_defaults(func=run)


def run(a) -> None:
    from asvp import api
    from asvp.exporter.teachers.train import quality_markdown

    rows = api.teacher_quality(TaskArgs.parse(a) or None)
    OutputArgs.print_json(rows) if a.json else print(quality_markdown(rows), end="")
