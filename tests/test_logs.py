"""What a run prints: jvision's lines, counted; durations, counts and metrics for people."""

import json

from helpers import run_main

from jvision import config_files, logs
from jvision.data import sources


def test_duration_count_and_metrics():
    assert [logs.duration(s) for s in (4.4, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]
    assert (
        logs.count(1, "process") == "1 process"
        and logs.count(16000, "example") == "16,000 examples"
    )
    line = logs.metrics(
        {"test/kl_nats": 3.0, "test/AP_1": 0.5, "test/mAP": 0.9, "test/nelbo_nats": 100.0, "x": 1},
        3,
    )
    assert line == "test/mAP 0.9, test/nelbo_nats 100, test/AP_1 0.5 (+2 more)"


def _expected_lines(config) -> int:
    """jvision's lines for a run of `config` from scratch: 4 at the start (devices, data, model,
    workdir), one per log period and per evaluation (the last one included), one at the end."""
    logs_ = config.total_steps // config.log_every_steps
    evaluations = config.total_steps // config.eval_every_steps
    return 4 + logs_ + evaluations + 1


def test_a_run_prints_its_lines_and_nothing_else(tmp_path):
    """A tiny run's stderr holds exactly the lines `_expected_lines` counts, all jvision's; the
    default VAE run, by the same count, prints at most 60."""
    sources.open_source("embedded_mnist", "train")  # Prepared (a first use adds two lines).
    result = run_main(
        "--config=configs/vae_mnist.py:tiny", f"--workdir={tmp_path}", "--config.log_every_steps=1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    config = config_files.load("configs/vae_mnist.py:tiny")
    config.log_every_steps = 1
    assert len(lines) == _expected_lines(config), "\n".join(lines)
    assert all(line.startswith("jvision: ") for line in lines), "\n".join(lines)
    assert result.stdout == ""
    results = json.loads((tmp_path / "results.json").read_text())
    assert lines[-1].startswith("jvision: done: step 4 in ")
    assert f"test/nll_is_nats {results['metrics']['test/nll_is_nats']:.5g}" in lines[-1]
    assert lines[-1].endswith(f"results in {tmp_path / 'results.json'}")
    assert _expected_lines(config_files.load("configs/vae_mnist.py")) <= 60
