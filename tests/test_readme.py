"""The README's two commands exist as documented, and CI runs them; the links of every page resolve."""
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


PAGES = ["README.md", "BENCHMARKS.md", "docs/*.md", "research/*.md", "research/notes/*.md"]


def broken_links(page: Path) -> list[str]:
    """Relative link targets of a Markdown page (anchors dropped) that name no file or folder."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    return [t for t in targets if "://" not in t and not (page.parent / t).exists()]


def test_every_page_links_resolve():
    pages = [p for pattern in PAGES for p in sorted(ROOT.glob(pattern))]
    assert len(pages) > 10
    bad = [f"{p.relative_to(ROOT)} -> {t}" for p in pages for t in broken_links(p)]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_the_link_check_sees_a_broken_link(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[ok](p.md) [web](https://example.org/x.md) [bad](missing/x.md#a)")
    assert broken_links(page) == ["missing/x.md"]
