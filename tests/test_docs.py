"""The front page and the docs: short, self-contained, every link resolving, and the test command
CI runs."""

import os
import re

from helpers import ROOT

PAGES = [
    "README.md",
    *sorted(f"docs/{f}" for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")),
]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _text(page: str) -> str:
    with open(os.path.join(ROOT, page)) as file:
        return file.read()


def test_the_front_page_is_short_and_refers_to_nothing_outside_the_repository():
    text = _text("README.md")
    assert len(text.splitlines()) <= 200
    for outside in ("../shared", "seeds/", "issue "):
        assert outside not in text, outside


def test_every_relative_link_resolves():
    for page in PAGES:
        for target in LINK.findall(_text(page)):
            if "://" in target or target.startswith("#"):
                continue
            path = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), target.split("#")[0]))
            assert os.path.exists(path), f"{page}: {target}"


def test_the_colab_link_is_marked_as_a_template():
    text = _text("README.md")
    for line in (line for line in text.splitlines() if "colab.research.google.com" in line):
        start = text.index(line)
        around = text[max(0, start - 300) : start + len(line) + 300]
        assert "OWNER" in line and "template" in around


def test_the_readme_names_the_test_command_ci_runs():
    text = _text("README.md")
    block = text.split("<!-- test-command -->")[1].split("```")[1].strip()
    assert block.startswith("python3 -m venv .venv") and block.endswith("python -m pytest -q tests")
