"""The Colab notebooks: stored without outputs, and executed headless against real workdirs."""

import json
import pathlib

import nbformat
import pytest
from helpers import ROOT
from nbclient import NotebookClient

NOTEBOOKS = sorted(pathlib.Path(ROOT, "colab").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def _execute(workdir=None, **parameters):
    """The notebook executed with `parameters` in its tagged parameters cell (papermill's way);
    `workdir` None leaves its default, a model zoo entry."""
    notebook = nbformat.read(pathlib.Path(ROOT, "colab", "evaluate.ipynb"), as_version=4)
    (cell,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    lines = cell.source.splitlines()
    if workdir is not None:
        parameters["WORKDIR"] = str(workdir)
    for name, value in parameters.items():
        lines = [f"{name} = {value!r}" if line.startswith(f"{name} =") else line for line in lines]
    cell.source = "\n".join(lines)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={}).execute()
    return notebook


def _printed(notebook, marker: str) -> str:
    for cell in notebook.cells:
        if cell.cell_type == "code" and marker in cell.source:
            return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    raise AssertionError(f"no cell with {marker!r}")


def _pictures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


@pytest.mark.parametrize("name", ["vae_mnist", "ssd_mnist"])
def test_evaluate_notebook_runs_on_a_workdir_and_prints_its_results(trained, name):
    workdir = trained(name).workdir
    notebook = _execute(workdir, SCORE_THRESHOLD=0.05)
    printed = json.loads(_printed(notebook, "metrics = run.evaluate"))
    assert printed == json.loads((workdir / "results.json").read_text())
    summaries = {"vae_mnist": 2, "ssd_mnist": 1}[name]
    detection = 1 if name == "ssd_mnist" else 0
    assert _pictures(notebook) == 1 + summaries + detection  # Curves, summaries, detections.
    detections = _printed(notebook, "is not a detector")
    assert ("detections with score >= 0.05" in detections) == (name == "ssd_mnist")


def test_evaluate_notebook_opens_a_zoo_entry_by_default(full_mnist_scenes):
    """As in Colab with nothing set: the default `zoo:ssd_mnist_priors`, without training (the
    split cut to 40 scenes for time)."""
    notebook = _execute(SPLIT="test[:40]", EVALS=["test"])
    printed = json.loads(_printed(notebook, "metrics = run.evaluate"))
    assert printed["step"] == 8000 and 0.5 < printed["metrics"]["test/mAP"] <= 1
    assert "no training curves in" in _printed(notebook, "train/loss")
    assert _pictures(notebook) == 2  # The family's summary and the detections.
