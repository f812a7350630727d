"""`jvision.sweep`: one config over several seeds, aggregated into mean ± std."""

import json
import shutil

import numpy as np
import pytest
from helpers import load_config, run_module

from jvision import sweep


def test_aggregate_is_mean_and_sample_std():
    results = {s: {"step": 4, "metrics": {"a": v, "b": 2 * v}} for s, v in enumerate([1.0, 2, 6])}
    summary = sweep.aggregate(results)
    assert summary["a"]["mean"] == pytest.approx(3.0)
    assert summary["a"]["std"] == pytest.approx(np.std([1, 2, 6], ddof=1))
    assert summary["b"]["n"] == 3 and summary["b"]["values"] == [2, 4, 12]
    assert sweep.aggregate({0: {"metrics": {"a": 5.0}}})["a"]["std"] == 0.0
    assert "| `a` | 3 ± 2.6 | 3 | 1, 2, 6 |" in sweep.table(summary)


def test_with_seed_sets_the_seed_and_fills_templates():
    config = load_config("transfer_mnist", "tiny")
    config.init_from.workdir = "runs/pretrain/seed_{seed}"
    seeded = sweep.with_seed(config, 7)
    assert seeded.seed == 7 and seeded.init_from.workdir == "runs/pretrain/seed_7"
    assert config.seed == 0 and config.init_from.workdir.endswith("{seed}")  # Copied, not changed.


def _sweep(*args):
    return run_module("jvision.sweep", *args, timeout=600)


def test_sweep_trains_each_seed_once_and_aggregates(tmp_path, trained):
    shutil.copytree(trained("vae_mnist").workdir, tmp_path / "seed_0")  # Seed 0 is finished.
    args = ["--config=configs/vae_mnist.py:tiny", "--seeds=0,1", f"--workdir={tmp_path}"]
    result = _sweep(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "jvision.sweep: seed 0: finished, reusing" in result.stderr
    assert "jvision.sweep: seed 1: training in" in result.stderr
    per_seed = [json.loads((tmp_path / f"seed_{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [
        json.loads((tmp_path / f"seed_{s}" / "config.json").read_text())["seed"] for s in (0, 1)
    ] == [0, 1]
    values = [r["metrics"]["test/nelbo_nats"] for r in per_seed]
    assert values[0] != values[1]  # Different seeds, different runs.
    summary = json.loads((tmp_path / "sweep.json").read_text())
    assert summary["seeds"] == [0, 1]
    nelbo = summary["metrics"]["test/nelbo_nats"]
    assert nelbo["mean"] == pytest.approx(np.mean(values))
    assert nelbo["std"] == pytest.approx(np.std(values, ddof=1))
    assert "| `test/nelbo_nats` |" in result.stdout

    again = _sweep(*args)  # Finished seeds are not trained again, and it says so.
    assert again.returncode == 0 and "training in" not in again.stderr
    assert again.stderr.count("finished, reusing") == 2
    assert again.stdout == result.stdout


def test_sweep_bad_input_is_one_line(tmp_path):
    result = _sweep("--config=configs/vae_mnist.py:tiny", "--seeds=0,x", f"--workdir={tmp_path}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "jvision: error: --seeds=0,x: give comma-separated integers"
    )
    result = _sweep(
        "--config=configs/vae_mnist.py:tiny", "--aggregate_only", f"--workdir={tmp_path}"
    )
    assert result.returncode == 1 and "no results.json under" in result.stderr
