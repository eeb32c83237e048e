"""The documentation: generated references are current, the index links every page, links resolve, the README
stays a front door, and no page tells development history."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from udavae.cli.docs_cmd import cli_reference, write_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_generated_references_are_current() -> None:
    stale = write_reference(DOCS / "reference", check=True)
    assert stale == [], f"stale: {stale}; run `udavae docs`"


def test_cli_examples_are_code_blocks_with_their_line_breaks() -> None:
    """A command's ``examples:`` stay one command per line (continuations kept), in a bash block."""
    sweep = cli_reference().split("## `udavae sweep`")[1].split("\n## ")[0]
    block = sweep.split("```bash\n")[1].split("```")[0].splitlines()
    assert "udavae sweep --out sweeps/seeds --status" in block
    slurm = next(i for i, line in enumerate(block) if "--launcher slurm" in line)
    assert block[slurm].endswith(" \\") and block[slurm + 1].lstrip().startswith("--slurm-partition gpu")
    assert "examples:" not in sweep.split("```")[0]


def test_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = {(DOCS / m.group(1)).resolve() for m in LINK.finditer(index)}
    missing = [
        p.relative_to(DOCS) for p in PAGES if p.name != "index.md" or p.parent != DOCS if p.resolve() not in linked
    ]
    assert missing == []


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = [
        m.group(1)
        for m in LINK.finditer(text)
        if "://" not in m.group(1) and not m.group(1).startswith("mailto:") and not (page.parent / m.group(1)).exists()
    ]
    assert broken == []


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 12 * 1024
    assert b"pip install torch==2.13.0 -e '.[test]' && pytest -q" in readme  # the CI command


@pytest.mark.parametrize("page", [ROOT / "README.md", *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_development_history(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\bthe deck\b|\bissue \d+|\bsession\b|\bprevious version\b", text, re.IGNORECASE)
