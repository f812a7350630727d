"""The front page and the docs: short, self-contained, every link resolving, and the test command
CI runs."""

import os
import re
import subprocess
import sys

import pytest
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
    block = text.split("<!-- test-command -->")[1].split("```bash")[1].split("```")[0].strip()
    assert block.startswith("python3 -m venv .venv") and block.endswith("python -m pytest -q tests")


# Every fenced block of the README and the docs names its language: `python` and `bash` blocks
# are executed by the test below as written, in a fresh directory beside links to the checkout's
# configs and tests; `text` blocks (layouts, synopses, output) are not code. A comment line just
# above a block changes how it runs: `<!-- run: tiny -->` runs each `--config=configs/NAME.py` at
# its `:tiny` variant and drops `--config.total_steps=N` (the variant's length is the point of
# it); `<!-- run: ci -->` is the install-and-test command, which .ci/run itself executes.
BLOCK = re.compile(
    r"^(?:<!-- run: (?P<mode>[a-z]+) -->\n)?```(?P<language>[a-z]*)\n(?P<code>.*?)^```$",
    re.S | re.M,
)
LANGUAGES = ("python", "bash", "text")


def _blocks() -> list[tuple[str, str, str, str]]:
    """(id, language, mode, code) of every fenced block in PAGES."""
    found = []
    for page in PAGES:
        text = _text(page)
        for match in BLOCK.finditer(text):
            line = text[: match.start("code")].count("\n")
            found.append((f"{page}:{line}", match["language"], match["mode"] or "", match["code"]))
    return found


def _tiny(code: str) -> str:
    code = re.sub(r"(--config=configs/\w+\.py)(?=[\s\"']|$)", r"\1:tiny", code, flags=re.M)
    return re.sub(r" --config\.total_steps=\d+", "", code)


RUNNABLE = [block for block in _blocks() if block[1] != "text" and block[2] != "ci"]


def test_every_block_names_its_language_and_runs():
    for name, language, mode, _ in _blocks():
        assert language in LANGUAGES, f"{name}: a fenced block names its language {LANGUAGES}"
        assert mode in ("", "tiny", "ci"), f"{name}: unknown run mode {mode!r}"
    assert [name.split(":")[0] for name, _, mode, _ in _blocks() if mode == "ci"] == ["README.md"]
    assert len(RUNNABLE) >= 9


@pytest.mark.parametrize(
    "language, mode, code", [b[1:] for b in RUNNABLE], ids=[b[0] for b in RUNNABLE]
)
def test_the_block_runs_as_written(language, mode, code, tmp_path, full_mnist_scenes):
    """In a directory of its own (what it writes stays there), with this checkout's configs and
    tests linked in and `.venv/bin/activate` putting this Python first on PATH."""
    del full_mnist_scenes  # The zoo's detectors read the scenes of full MNIST's test digits.
    for linked in ("configs", "tests", "benchmarks", "experiments"):
        (tmp_path / linked).symlink_to(os.path.join(ROOT, linked))
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "activate").write_text(
        f'export PATH="{os.path.dirname(sys.executable)}:$PATH"\n'
    )
    code = _tiny(code) if mode == "tiny" else code
    script = tmp_path / ("block.py" if language == "python" else "block.sh")
    script.write_text(code)
    command = (
        [sys.executable, script] if language == "python" else ["bash", "-eo", "pipefail", script]
    )
    result = subprocess.run(
        command,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, (
        f"{code}\n--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
