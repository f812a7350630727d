"""Reading a workdir's model without the optimizer: the newest readable step, an explicit one,
damage named, and a workdir read while it trains (steps rotated away under the reader)."""

import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT

from jvision import evaluate
from jvision.errors import UserError
from jvision.safety import reader


def test_the_newest_step_and_an_explicit_one(trained):
    workdir = trained("vae_mnist").workdir
    model, meta = reader.read_arrays(workdir)
    assert meta["step"] == 4 and "encoder" in model
    assert reader.read_meta(workdir, 2)["step"] == 2
    with pytest.raises(UserError, match="has no checkpoint at step 3; its steps: 2, 4"):
        reader.read_arrays(workdir, 3)


def test_an_empty_newest_step_directory_is_passed_over(trained, tmp_path):
    """As training passes over it (a save that never got its files)."""
    workdir = tmp_path / "w"
    shutil.copytree(trained("vae_mnist").workdir, workdir)
    (workdir / "checkpoints" / "6").mkdir()
    assert reader.read_meta(workdir)["step"] == 4
    with pytest.raises(UserError, match="step 6 was removed \\(or never finished\\)"):
        reader.read_meta(workdir, 6)


@pytest.mark.parametrize("removed", ["4", "4/model/_METADATA"], ids=["whole", "midway"])
def test_a_step_rotated_away_while_read_falls_back_to_the_next(
    trained, tmp_path, monkeypatch, removed
):
    """The trainer removes step 4 while it is read: all of it, or (midway through its removal)
    a file Orbax reads; either way the reader takes step 2."""
    workdir = tmp_path / "w"
    shutil.copytree(trained("vae_mnist").workdir, workdir)
    original = reader._item

    def rotate_first(workdir_, step, target, item):
        if step == 4:
            path = workdir / "checkpoints" / removed
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        return original(workdir_, step, target, item)

    monkeypatch.setattr(reader, "_item", rotate_first)
    _, meta = reader.read_arrays(workdir)
    assert meta["step"] == 2


def test_an_error_reading_a_whole_checkpoint_is_raised(trained, monkeypatch):
    """Only a checkpoint that changed under the reader is passed over."""

    def broken(workdir, step, target, item):
        raise ValueError("pytree structure error")

    monkeypatch.setattr(reader, "_item", broken)
    with pytest.raises(ValueError, match="pytree structure error"):
        reader.read_arrays(trained("vae_mnist").workdir)


def test_damage_is_named_never_loaded(trained, tmp_path):
    workdir = tmp_path / "w"
    shutil.copytree(trained("vae_mnist").workdir, workdir)
    (workdir / "checkpoints" / "4" / "jvision_checksums.json").unlink()
    with pytest.raises(UserError, match="checkpoints/4 is damaged \\(it has no jvision_checks"):
        reader.read_arrays(workdir)


def test_evaluating_a_workdir_while_it_trains(tmp_path):
    """The notebook's main use: a run saving at every step and keeping one checkpoint, evaluated
    again and again meanwhile; every evaluation succeeds."""
    workdir = tmp_path / "live"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jvision.main",
            "--config=configs/vae_mnist.py:tiny",
            f"--workdir={workdir}",
            "--config.total_steps=100000",
            "--config.ckpt_every_steps=1",
            "--config.keep_checkpoints=1",
            "--config.eval_every_steps=100000",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not [p for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]:
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-2000:]
            time.sleep(0.2)
        steps = []
        for _ in range(4):
            loaded = evaluate.load(workdir)
            steps.append(loaded.step)
            assert loaded.evaluate()["test/nelbo_nats"] > 0
        assert steps == sorted(steps) and steps[-1] > steps[0]  # It trained meanwhile.
    finally:
        run.send_signal(signal.SIGTERM)
        run.communicate(timeout=120)
    assert run.returncode == 75
