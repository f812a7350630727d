"""The model zoo (`zoo/`, `jvision.zoo`): every entry intact and within its size, re-scored in
float64 to the numbers on its card, opened like a workdir, and never written."""

import json
import os

import numpy as np
import pytest
from helpers import ROOT, load_config, run_main, run_module

from jvision import evaluate, logs, train, zoo
from jvision.errors import UserError
from jvision.safety import reader

ENTRIES = zoo.names()
# Float64 evaluations of the same program on two CPUs differ by their summation orders and
# fused multiply-adds: ≲ n·2⁻⁵³ relative per reduction of n ≤ 10⁶ terms, compounded over the
# tens of layers of these models, ≲ 1e-9. A change of a model's computation (one float32
# rounding of its weights already) moves them by ≥ 1e-7 relative; counts (APs, top-1) move by
# ≥ 1/N. RTOL = 1e-8.
RESCORE_RTOL = 1e-8


def test_the_zoo_holds_every_model_within_its_size():
    assert len(ENTRIES) >= 8
    sizes = {name: zoo.size(zoo.ROOT / name) for name in ENTRIES}
    assert max(sizes.values()) <= zoo.MAX_ENTRY_BYTES, sizes
    assert sum(sizes.values()) <= zoo.MAX_ZOO_BYTES, sizes


@pytest.fixture
def datasets(full_mnist_scenes):
    del full_mnist_scenes  # Prepared.


@pytest.mark.parametrize("name", ENTRIES)
def test_every_entry_rescores_to_its_card(name, datasets):
    """The card's float64 numbers on its fixed part of the test split, recomputed on this CPU."""
    entry = zoo.ROOT / name
    card = zoo.card(entry)
    rescore = card["rescore"]
    again = evaluate.rescore(entry, rescore["split"], tuple(rescore["evals"]))
    assert again.keys() == rescore["metrics"].keys()
    for metric, value in rescore["metrics"].items():
        assert again[metric] == pytest.approx(value, rel=RESCORE_RTOL, abs=1e-12), metric
    results = json.loads((entry / "results.json").read_text())  # The whole split's numbers.
    assert results["step"] == card["steps"] and results["metrics"]


def test_the_results_page_and_the_index_state_every_entry():
    """docs/results.md's zoo table and zoo/README.md give each entry's whole-split numbers as its
    results.json holds them (the full-split numbers on the cards equal the results page)."""
    page = open(os.path.join(ROOT, "docs", "results.md")).read()
    section = page.split("\n## The model zoo\n")[1].split("\n## ")[0]
    index = (zoo.ROOT / "README.md").read_text()
    for name in ENTRIES:
        results = json.loads((zoo.ROOT / name / "results.json").read_text())["metrics"]
        stated = logs.metrics(results, limit=2)
        rows = [line for line in section.splitlines() if line.startswith(f"| [`{name}`]")]
        assert len(rows) == 1 and stated in rows[0], (name, stated)
        assert f"[`{name}`]({name}/README.md)" in index and stated in index, name


def test_a_changed_byte_is_named(tmp_path):
    import shutil

    entry = tmp_path / "copy"
    shutil.copytree(zoo.ROOT / "ssd_mnist_priors", entry)
    data = bytearray((entry / "params.npz").read_bytes())
    data[len(data) // 2] ^= 1
    (entry / "params.npz").write_bytes(bytes(data))
    with pytest.raises(UserError, match="params.npz has changed"):
        evaluate.load(entry)


def test_an_entry_opens_like_a_workdir_and_predicts(datasets):
    run = evaluate.load("zoo:ssd_mnist_priors")
    assert run.step == zoo.card(zoo.ROOT / "ssd_mnist_priors")["steps"]
    scenes = run.examples(n=8)
    detections = run.predict(scenes["image"])
    assert detections["valid"].any()
    stored = np.load(zoo.ROOT / "ssd_mnist_priors" / "params.npz")  # NumPy alone reads it.
    assert "network/base/0/0/conv/kernel" in stored.files


def test_the_command_line_evaluates_an_entry(datasets):
    result = run_module(
        "jvision.evaluate",
        "--workdir=zoo:ssd_mnist_priors",
        "--config.evals.test.split=test[:16]",
        "--config.data.eval_split=test[:16]",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 < json.loads(result.stdout)["metrics"]["test/mAP"] <= 1


def test_a_run_starts_from_an_entry(tmp_path):
    """`init_from` copies the entry's encoder, as from a workdir (PatchVAE's transfer)."""
    config = load_config("transfer_mnist", None)
    config.update(total_steps=2, log_every_steps=1, eval_every_steps=2, ckpt_every_steps=2)
    config.data.eval_split = config.evals.test.split = "test[:16]"
    config.batch_size = config.eval_batch_size = 16
    config.init_from.workdir = "zoo:patchvae_mnist"
    train.train_and_evaluate(config, str(tmp_path))
    source, _ = reader.read_arrays("zoo:patchvae_mnist")
    after, _ = reader.read_arrays(tmp_path)
    np.testing.assert_array_equal(
        source["encoder"]["conv1"]["kernel"], after["encoder"]["conv1"]["kernel"]
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--config=configs/ssd_mnist_priors.py:tiny", "--workdir=zoo:ssd_mnist_priors"],
        ["--config=configs/ssd_mnist_priors.py:tiny", f"--workdir={zoo.ROOT / 'new_entry'}"],
    ],
    ids=["an entry", "a folder in the zoo"],
)
def test_nothing_trains_into_the_zoo(args):
    before = sorted(os.listdir(zoo.ROOT))
    result = run_main(*args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("jvision: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-2000:]
    assert "in the model zoo, which is read-only" in errors[0]
    assert sorted(os.listdir(zoo.ROOT)) == before


def test_no_pictures_or_export_into_the_zoo():
    for module, flag in (("jvision.evaluate", "--images"), ("jvision.export", "--out")):
        target = zoo.ROOT / "ssd_mnist_priors" / ("pictures" if flag == "--images" else "x.jax")
        result = run_module(module, "--workdir=zoo:ssd_mnist_priors", f"{flag}={target}")
        assert result.returncode == 1 and "read-only" in result.stderr, result.stderr[-2000:]
        assert not target.exists()
