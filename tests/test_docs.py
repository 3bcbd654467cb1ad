"""The README and docs/ pages: their links lead somewhere, and the walkthrough names exactly the figures the demo run
writes (the committed figures/ come from `make notebooks`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")
FIGURE = re.compile(r"`((?:eda|baselines|bert|errors|predict|tapt|unlabelled|llm)_[^`<>…]+)`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(page):
    missing = [
        target
        for target, _ in LINK.findall(page.read_text(encoding="utf-8"))
        if not target.startswith(("http://", "https://")) and not (page.parent / target).exists()
    ]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_the_readme_stays_a_front_door():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 180
    text = "\n".join(lines)
    assert "make notebooks" in text and "make test" in text and "nblib.study init" in text


def test_the_walkthrough_names_every_figure_of_the_demo_run():
    named = set(FIGURE.findall((ROOT / "docs" / "walkthrough.md").read_text(encoding="utf-8")))
    written = {p.stem for p in (ROOT / "figures").glob("*.png")}
    assert named, "the walkthrough names no figure"
    assert not named - written, f"named in docs/walkthrough.md but not in figures/: {sorted(named - written)}"
    assert not written - named, f"in figures/ but not named in docs/walkthrough.md: {sorted(written - named)}"
    assert {p.stem for p in (ROOT / "figures").glob("*.pdf")} == written  # every figure as PNG and PDF
