"""Several processes: data sharding, evaluation coverage, and a real 2-process run on localhost.

The 2-process test starts `python -m jvision.main` twice with `jax.distributed` on localhost
(4 CPU devices each, JAX's default gloo CPU collectives), stops it with SIGTERM to one process,
resumes it, and compares it with the same config trained by one process on 8 devices.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config

from jvision import train
from jvision.data import pipeline
from jvision.safety import reader


def test_processes_read_disjoint_rows_that_make_the_single_process_batch():
    config = load_config("vae_mnist", "tiny")
    whole = next(pipeline.host_batches(config)[0])
    parts = [next(pipeline.host_batches(config, process=(index, 2))[0]) for index in range(2)]
    for field in whole:
        np.testing.assert_array_equal(np.concatenate([p[field] for p in parts]), whole[field])


def test_evaluation_counts_every_example_once_over_processes():
    config = load_config("vae_mnist", "tiny")
    config.eval_batch_size = 16
    split = "test[:37]"  # Not a multiple of the batch: the last global batch is padded.
    config.data.binarize = "none"
    whole = list(pipeline.EvalData(config, split))
    seen = []
    for index in range(2):
        batches = list(pipeline.EvalData(config, split, process=(index, 2)))
        assert len(batches) == len(whole) == 3  # Every process runs every eval step.
        seen.append(batches)
    real = np.concatenate(
        [
            np.concatenate([seen[p][b]["image"][seen[p][b]["mask"] > 0] for p in range(2)])
            for b in range(3)
        ]
    )
    expected = np.concatenate([b["image"][b["mask"] > 0] for b in whole])
    assert len(real) == 37
    np.testing.assert_array_equal(real, expected)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _launch(args: list[str], logs, port: int) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ["XLA_FLAGS"].replace("device_count=8", "device_count=4"),
        "JAX_PLATFORMS": "cpu",
    }
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jvision.main",
                *args,
                f"--coordinator_address=localhost:{port}",
                "--num_processes=2",
                f"--process_id={index}",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for index, log in enumerate(logs)
    ]


def _wait(processes, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    finally:  # Never leave a process behind, whatever happened.
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


# Tolerance: the gradient is summed across processes in another order than within one, so the
# runs differ by float rounding (1.2e-7 in the parameters after 60 steps, measured), and training
# amplifies such differences slowly (3.5e-5 after 200 steps); this test trains 24 steps. SGD
# rather than the config's Adam: Adam divides each gradient by its own running scale, so a
# gradient that is zero in exact arithmetic (here the conv biases that BatchNorm cancels) becomes
# a full ±lr step whose sign is float noise; with Adam the two runs' BatchNorm-cancelled biases
# differ by several lr after 4 steps while every other parameter agrees to 3e-7 (measured).
STEPS, EVERY = 24, 6
COMMON = [
    "--config=configs/vae_mnist.py:tiny",
    f"--config.total_steps={STEPS}",
    f"--config.ckpt_every_steps={EVERY}",
    f"--config.log_every_steps={EVERY}",
    f"--config.eval_every_steps={STEPS}",
    "--config.optimizer.name=sgd",
    "--config.optimizer.learning_rate=1e-4",
]


def _reference_config():
    config = load_config("vae_mnist", "tiny")
    config.total_steps = STEPS
    config.ckpt_every_steps = config.log_every_steps = EVERY
    config.eval_every_steps = STEPS
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 1e-4
    return config


def test_two_processes_train_stop_resume_and_equal_one_process(tmp_path):
    workdir = tmp_path / "two"
    args = [*COMMON, f"--workdir={workdir}"]
    logs = [open(tmp_path / f"first_{i}.log", "w") for i in range(2)]
    processes = _launch(args, logs, _free_port())
    try:
        deadline = time.monotonic() + 240
        while not (workdir / "checkpoints" / str(EVERY)).exists():
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), (
                tmp_path / "first_0.log"
            ).read_text()[-3000:]
            time.sleep(0.05)
        os.kill(processes[1].pid, signal.SIGTERM)  # Preemption notice to one host only.
        codes = _wait(processes, 240)
    finally:
        for log in logs:
            log.close()
    outputs = [(tmp_path / f"first_{i}.log").read_text() for i in range(2)]
    assert codes == [75, 75], outputs[0][-3000:]
    stops = [
        [line for line in out.splitlines() if line.startswith("jvision: stopped")]
        for out in outputs
    ]
    assert stops[0] == stops[1] and len(stops[0]) == 1, stops  # Both stopped at the same step.
    stopped_at = int(stops[0][0].split(" at step ")[1].split(";")[0])
    assert EVERY <= stopped_at < STEPS
    assert (workdir / "checkpoints" / str(stopped_at)).exists()
    assert not (workdir / "results.json").exists()

    logs = [open(tmp_path / f"second_{i}.log", "w") for i in range(2)]
    try:
        codes = _wait(_launch(args, logs, _free_port()), 240)
    finally:
        for log in logs:
            log.close()
    resumed = (tmp_path / "second_0.log").read_text()
    assert codes == [0, 0], resumed[-3000:]
    assert f"resuming from step {stopped_at}" in resumed

    reference = tmp_path / "one"
    train.train_and_evaluate(_reference_config(), str(reference))
    two, _ = reader.read_arrays(workdir)
    one, _ = reader.read_arrays(reference)
    for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    results = [json.loads((d / "results.json").read_text()) for d in (workdir, reference)]
    assert results[0]["step"] == results[1]["step"] == STEPS
    for key, value in results[1]["metrics"].items():
        assert results[0]["metrics"][key] == pytest.approx(value, rel=1e-5), key
    # Only process 0 wrote TensorBoard events.
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 2  # Two runs of process 0.
