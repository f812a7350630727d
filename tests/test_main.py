"""The command line end to end: `python -m jvision.main` as a user runs it."""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, run_main
from tensorboard.backend.event_processing import event_accumulator


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("jvision: error:")]


def test_tiny_vae_trains_logs_and_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    result = run_main("--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr[-3000:]

    results = json.load(open(os.path.join(workdir, "results.json")))
    assert results["step"] == 4
    assert 0 < results["metrics"]["test/nelbo_nats"] < 1000
    assert set(os.listdir(os.path.join(workdir, "checkpoints"))) == {"2", "4"}
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["name"] == "vae"

    events = event_accumulator.EventAccumulator(workdir, size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    assert {"train/loss", "train/kl_nats", "test/nelbo_nats"} <= tags
    assert {"reconstructions", "samples"} <= tags
    assert "Traceback" not in result.stderr

    again = run_main("--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 4" in again.stderr
    assert "settings changed" not in again.stderr
    assert json.load(open(os.path.join(workdir, "results.json"))) == results

    # Changed settings are allowed on resume, and named.
    longer = run_main(
        "--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}", "--config.total_steps=6"
    )
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming with settings changed since: total_steps: 4 -> 6" in longer.stderr
    assert json.load(open(os.path.join(workdir, "results.json")))["step"] == 6


@pytest.mark.parametrize(
    "config",
    [
        "configs/draw_mnist.py:tiny",
        "configs/draw_mnist_small.py:tiny",
        "configs/draw_mnist.py:tiny --config.model.use_attention=False",
    ],
)
def test_tiny_draw_variants_write_results_and_drawing_sequences(tmp_path, config):
    config_file, *overrides = config.split()
    result = run_main(f"--config={config_file}", f"--workdir={tmp_path}", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.load(open(tmp_path / "results.json"))
    assert results["step"] == 4 and results["metrics"]["test/nelbo_nats"] > 0
    assert sorted(os.listdir(tmp_path / "images")) == [
        "generation.png",
        "reconstruction.png",
        "samples.png",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.no_such_key=1"], "no_such_key"),
        (["--config.model.name=vqvae"], "unknown model.name 'vqvae'; known models:"),
        (["--config.batch_size=12"], "batch_size 12 is not divisible by 8 devices"),
        (["--config.data.name=mnist"], "python -m jvision.data.prepare --dataset=mnist"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    data_dir = f"--config.data.data_dir={tmp_path / 'empty'}"
    result = run_main(
        "--config=configs/vae_mnist.py:tiny", f"--workdir={tmp_path / 'w'}", data_dir, *args
    )
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_missing_flags_and_bad_config_argument(tmp_path):
    result = run_main("--config=configs/vae_mnist.py:tiny")
    assert result.returncode == 1 and error_lines(result) == [
        "jvision: error: --workdir is required"
    ]
    result = run_main("--config=configs/vae_mnist.py:huge", f"--workdir={tmp_path}")
    assert result.returncode == 1
    assert "unknown config argument 'huge'" in error_lines(result)[0]


def test_tiny_ssd_reports_map_and_per_class_ap(tmp_path):
    result = run_main("--config=configs/ssd_mnist.py:tiny", f"--workdir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "results.json"))["metrics"]
    assert set(metrics) == {"test/mAP", *(f"test/AP_{d}" for d in range(10))}
    assert 0 <= metrics["test/mAP"] <= 1
    assert os.path.exists(tmp_path / "images" / "detections.png")


@pytest.mark.parametrize("kind", ["patchvae", "vae"])
def test_tiny_patchvae_and_its_baseline(tmp_path, kind):
    result = run_main(
        "--config=configs/patchvae_mnist.py:tiny",
        f"--workdir={tmp_path}",
        f"--config.model.kind={kind}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "results.json"))["metrics"]
    assert {"test/loss", "test/recon", "test/kl_appearance"} <= set(metrics)
    assert ("test/kl_occurrence" in metrics) == (kind == "patchvae")
    images = set(os.listdir(tmp_path / "images"))
    parts = {"part_occurrence.png", "part_patches.png"}
    assert images == {"reconstructions.png"} | (parts if kind == "patchvae" else set())


def test_tiny_transfer_from_a_tiny_pretrained_workdir(tmp_path):
    pretrained, transferred = tmp_path / "pretrained", tmp_path / "transfer"
    result = run_main("--config=configs/patchvae_mnist.py:tiny", f"--workdir={pretrained}")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_main(
        "--config=configs/transfer_mnist.py:tiny",
        f"--workdir={transferred}",
        f"--config.init_from.workdir={pretrained}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(transferred / "results.json"))["metrics"]
    assert set(metrics) == {"test/loss", "test/top1"}


def test_runs_and_logs_without_tensorflow(tmp_path):
    """GPU and TPU images often lack TensorFlow: training and TensorBoard logs work without it."""
    result = subprocess.run(
        [
            sys.executable,
            "tests/without_tensorflow.py",
            "jvision.main",
            "--config=configs/vae_mnist.py:tiny",
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TensorFlow is not installed" in result.stderr
    assert json.load(open(tmp_path / "results.json"))["step"] == 4
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"train/loss", "test/nelbo_nats"} <= set(events.Tags()["scalars"])
    assert {"reconstructions", "samples"} <= set(events.Tags()["images"])
