"""The README's two commands exist as documented, and CI runs them."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_commands_are_make_targets_and_ci_runs_them():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"
        assert f"make {target}" in ci
    assert "constraints.txt" in makefile  # set-up pins the CPU torch wheel


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\(((?:docs/)?[A-Za-z_./-]+\.md)\)", readme):
        assert (ROOT / link).exists(), link
