"""Faults and bad input, reproduced: damaged checkpoints, signals at any moment, two runs on one
workdir, and every bad input as one line that leaves the workdir as it was."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config

from jvision import checkpoint, checkpoint_reader, checksums, evaluation, preemption, train
from jvision.errors import UserError


def _tiny(**overrides):
    config = load_config("vae_mnist", "tiny")
    config.update(overrides)
    return config


def _params(workdir):
    return jax.tree.leaves(checkpoint_reader.load_model(workdir)[0])


def _assert_same_params(a, b):
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    """A 6-step run (checkpoints every 2 steps), to compare interrupted runs with."""
    workdir = tmp_path_factory.mktemp("unbroken")
    train.train_and_evaluate(_tiny(total_steps=6), str(workdir))
    return workdir


def _array_file(step_dir):
    files = [p for p in (step_dir / "model").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


# ----------------------------------------------------------------------------- integrity


def _flip(path):
    data = bytearray(path.read_bytes())
    for index in range(len(data) // 2, len(data) // 2 + 4):
        data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage",
    [
        lambda step: _flip(_array_file(step)),
        lambda step: _truncate(_array_file(step)),
        lambda step: shutil.rmtree(step / "meta"),
        # No checksums to vouch for it and unreadable: set aside too.
        lambda step: (
            (step / checksums.CHECKSUMS_FILE).unlink(),
            shutil.rmtree(step / "opt"),
        ),
    ],
    ids=["flipped bytes", "truncated", "missing part", "unsealed and unreadable"],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_last_good_one(
    tmp_path, unbroken, damage, caplog
):
    train.train_and_evaluate(_tiny(total_steps=4), str(tmp_path))
    assert (tmp_path / "checkpoints" / "4" / checksums.CHECKSUMS_FILE).exists()  # Sealed.
    damage(tmp_path / "checkpoints" / "4")
    train.train_and_evaluate(_tiny(total_steps=6), str(tmp_path))
    assert (tmp_path / checkpoint.DAMAGED_DIR / "4").is_dir()  # Kept for inspection.
    assert "resuming from step 2, the newest intact checkpoint; skipped damaged step(s) 4" in (
        caplog.text
    )
    _assert_same_params(tmp_path, unbroken)  # Resumed from 2 exactly.


def test_when_no_checkpoint_is_intact_the_run_stops(tmp_path):
    train.train_and_evaluate(_tiny(total_steps=4), str(tmp_path))
    for step in ("2", "4"):
        _flip(_array_file(tmp_path / "checkpoints" / step))
    with pytest.raises(UserError, match="no intact checkpoint left .*step\\(s\\) 4, 2 are damaged"):
        train.train_and_evaluate(_tiny(total_steps=6), str(tmp_path))


def test_an_intact_checkpoint_that_does_not_fit_is_not_called_damaged(tmp_path):
    train.train_and_evaluate(_tiny(total_steps=2), str(tmp_path))
    config = _tiny(total_steps=4)
    config.optimizer.name = "sgd"  # Another optimizer state: the checkpoint's files are fine.
    with pytest.raises(UserError, match="is intact .* does not fit this version's model"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / checkpoint.DAMAGED_DIR).exists()


def test_evaluating_a_damaged_checkpoint_says_so(tmp_path):
    from jvision import evaluate

    train.train_and_evaluate(_tiny(), str(tmp_path))
    _flip(_array_file(tmp_path / "checkpoints" / "4"))
    with pytest.raises(UserError, match="checkpoint .*/4 is damaged \\(model/.* has changed\\)"):
        evaluate.load(tmp_path)


# ----------------------------------------------------------------------------- signals


def _signal_when(monkeypatch, module, name, number, at_call):
    """Makes `module.name` send `number` to this process on its `at_call`-th call."""
    original, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(1)
        result = original(*args, **kwargs)
        if len(calls) == at_call:
            os.kill(os.getpid(), number)
        return result

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize(
    "where, module, name, number, at_call",
    [
        ("in the step loop", train, "itstime", signal.SIGTERM, 7),  # During step 3.
        ("during a save", checkpoint.Checkpoints, "save", signal.SIGTERM, 1),  # Step 2, in flight.
        ("during an evaluation", evaluation.Evaluation, "metrics", signal.SIGINT, 1),  # Step 2.
    ],
)
def test_a_signal_at_any_moment_saves_the_current_step_and_resumes_exactly(
    tmp_path, unbroken, monkeypatch, where, module, name, number, at_call
):
    _signal_when(monkeypatch, module, name, number, at_call)
    with pytest.raises(preemption.Stopped) as stopped:
        train.train_and_evaluate(_tiny(total_steps=6), str(tmp_path))
    monkeypatch.undo()
    step = stopped.value.step
    assert 0 < step < 6 and (tmp_path / "checkpoints" / str(step)).is_dir()
    assert stopped.value.signal_name == signal.Signals(number).name
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # Handlers restored.
    train.train_and_evaluate(_tiny(total_steps=6), str(tmp_path))
    _assert_same_params(tmp_path, unbroken)


def _main(*args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "jvision.main", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(path, process, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


LONG_RUN = ["--config=configs/vae_mnist.py:tiny", "--config.total_steps=100000"]


def test_sigterm_from_outside_exits_75_with_one_line(tmp_path):
    workdir = tmp_path / "run"
    run = _main(*LONG_RUN, f"--workdir={workdir}")
    _wait_for(workdir / "checkpoints" / "2", run)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == preemption.EXIT_STATUS, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("jvision:")]
    assert len(lines) == 1 and "stopped by SIGTERM at step" in lines[0]
    assert "Traceback" not in stderr
    stopped_at = int(lines[0].split(" at step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()


def test_a_second_ctrl_c_exits_at_once():
    """While a stop is under way (a save, an evaluation), a second Ctrl-C ends the process."""
    script = (
        "import os, signal, time\n"
        "from jvision import preemption\n"
        "with preemption.StopRequests() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.should_stop(1) and stop.signal_name == 'SIGINT'\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)  # A long save: the second Ctrl-C must not wait for it.\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == preemption.INTERRUPTED_STATUS, result.stderr[-2000:]
    assert "jvision: interrupted; the workdir resumes from its last checkpoint" in result.stderr


# ----------------------------------------------------------------------------- one writer


def test_a_second_run_on_a_workdir_in_use_is_refused_and_no_lock_outlives_kill_9(tmp_path):
    workdir = tmp_path / "run"
    first = _main(*LONG_RUN, f"--workdir={workdir}")
    _wait_for(workdir / "checkpoints" / "2", first)
    second = _main(*LONG_RUN, f"--workdir={workdir}")
    _, stderr = second.communicate(timeout=120)
    errors = [line for line in stderr.splitlines() if line.startswith("jvision: error:")]
    assert second.returncode == 1 and len(errors) == 1, stderr[-3000:]
    assert f"is in use by another run (pid {first.pid} on " in errors[0]
    first.kill()  # kill -9: the OS drops the lock.
    first.wait()
    third = _main(
        "--config=configs/vae_mnist.py:tiny", "--config.total_steps=2", f"--workdir={workdir}"
    )
    _, stderr = third.communicate(timeout=240)
    assert third.returncode == 0, stderr[-3000:]
    assert not (workdir / ".jvision_lock.json").exists()


# ----------------------------------------------------------------------------- bad input


def _snapshot(root):
    if not root.exists():
        return None
    if root.is_file():
        return root.read_bytes()
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finished")
    train.train_and_evaluate(_tiny(), str(workdir))
    return workdir


BAD_INPUTS = [
    # (case, arguments, expected text in the one error line, workdir: "new" | "finished" | ...)
    ("workdir is a file", [], "is a file, not a directory", "file"),
    ("workdir cannot be made", [], "--workdir /proc/jvision_", "proc"),
    ("batch_size 0", ["--config.batch_size=0"], "batch_size=0: use 1 or more", "new"),
    ("negative seed", ["--config.seed=-5"], "seed=-5: use 0 to 4294967295", "new"),
    ("negative steps", ["--config.total_steps=-1"], "total_steps=-1: use 0 or more", "new"),
    ("zero period", ["--config.ckpt_every_steps=0"], "ckpt_every_steps=0: use 1 or more", "new"),
    ("negative rate", ["--config.optimizer.learning_rate=-1"], "use a finite value", "new"),
    ("negative clip", ["--config.optimizer.clip_norm=-1.0"], "clip_norm=-1.0", "new"),
    ("unknown key", ["--config.no_such_key=1"], "unknown config key 'no_such_key'", "new"),
    ("unknown model", ["--config.model.name=vqvae"], "unknown model.name 'vqvae'", "new"),
    ("indivisible batch", ["--config.batch_size=12"], "not divisible by 8 devices", "new"),
    ("data not prepared", ["--config.data.name=mnist"], "jvision.data.prepare", "new"),
    ("another model", ["--config.model.latent_dim=6"], "written for a different model", "finished"),
    ("results without checkpoints", [], "has a results.json but no checkpoints", "no checkpoints"),
]


@pytest.mark.parametrize(
    "case, args, message, workdir_kind", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_and_leaves_the_workdir_as_it_was(
    tmp_path, finished, case, args, message, workdir_kind
):
    workdir = tmp_path / "workdir"
    if workdir_kind == "file":
        workdir.write_text("not a directory")
    elif workdir_kind == "proc":
        workdir = f"/proc/jvision_{os.getpid()}"
    elif workdir_kind in ("finished", "no checkpoints"):
        shutil.copytree(finished, workdir)
        if workdir_kind == "no checkpoints":
            shutil.rmtree(workdir / "checkpoints")
    workdir_path = workdir if not isinstance(workdir, str) else None
    before = _snapshot(workdir_path) if workdir_path else None
    if case == "data not prepared":
        args = [*args, f"--config.data.data_dir={tmp_path / 'no_data'}"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jvision.main",
            "--config=configs/vae_mnist.py:tiny",
            f"--workdir={workdir}",
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("jvision: error:")]
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    if workdir_path:
        assert _snapshot(workdir_path) == before  # Byte for byte; None: still not there.


# ----------------------------------------------------------------------------- decisions


def test_itstime_fires_every_period_and_at_the_end():
    assert [s for s in range(1, 11) if train.itstime(s, 3, 10)] == [3, 6, 9, 10]
    assert [s for s in range(1, 5) if train.itstime(s, 100, 4)] == [4]


def test_optimizer_matches_a_hand_written_adam_with_coupled_decay_and_bias_rate():
    import ml_collections

    from jvision import optim

    settings = ml_collections.ConfigDict(
        {
            "name": "adam",
            "learning_rate": 0.1,
            "b1": 0.9,
            "b2": 0.999,
            "weight_decay": 0.01,
            "decay_steps": (2,),
            "decay_factor": 0.5,
            "bias_lr_multiplier": 2.0,
        }
    )
    params = {"kernel": np.array([1.0, -2.0]), "bias": np.array([0.5])}
    transform = optim.make(settings)
    state = transform.init(params)
    expected = {k: v.copy() for k, v in params.items()}
    moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    rng = np.random.default_rng(0)
    for step in range(4):
        grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
        updates, state = transform.update(grads, state, params)
        params = {k: params[k] + np.asarray(updates[k]) for k in params}
        rate = 0.1 * (0.5 if step >= 2 else 1.0)  # Halved from step 2 on.
        for k in expected:  # torch.optim.Adam: decay added to the gradient, then Adam.
            g = grads[k] + 0.01 * expected[k]
            m, v = moments[k]
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            moments[k] = (m, v)
            m_hat, v_hat = m / (1 - 0.9 ** (step + 1)), v / (1 - 0.999 ** (step + 1))
            scale = 2.0 if k == "bias" else 1.0
            expected[k] = expected[k] - scale * rate * m_hat / (np.sqrt(v_hat) + 1e-8)
        for k in params:  # optax computes in float32, the reference in float64.
            np.testing.assert_allclose(params[k], expected[k], rtol=1e-4)


def test_sgd_with_momentum_matches_torch_conventions():
    import ml_collections

    from jvision import optim

    settings = ml_collections.ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 0.1,
            "momentum": 0.9,
            "weight_decay": 0.1,
            "decay_steps": (),
            "decay_factor": 0.1,
        }
    )
    params = {"w": np.array([1.0])}
    transform = optim.make(settings)
    state = transform.init(params)
    expected, velocity = 1.0, 0.0
    for grad in (0.5, -0.25, 1.0):
        updates, state = transform.update({"w": np.array([grad])}, state, params)
        params = {"w": params["w"] + np.asarray(updates["w"])}
        velocity = 0.9 * velocity + (grad + 0.1 * expected)  # torch.optim.SGD(dampening=0).
        expected -= 0.1 * velocity
        np.testing.assert_allclose(params["w"], [expected], rtol=1e-6)


def test_clipping_scales_the_gradient_to_the_global_norm_before_decay():
    import ml_collections

    from jvision import optim

    settings = ml_collections.ConfigDict(
        {
            "name": "sgd",
            "learning_rate": 1.0,
            "weight_decay": 0.5,
            "clip_norm": 2.0,
            "decay_steps": (),
            "decay_factor": 0.1,
        }
    )
    params = {"a": np.array([1.0, 0.0]), "b": np.array([2.0])}
    transform = optim.make(settings)
    state = transform.init(params)
    large = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
    small = {"a": np.zeros(2), "b": np.array([1.0])}
    for grads in (large, small):
        norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
        factor = min(1.0, 2.0 / norm)  # |g| = 5 → scaled to 2; |g| = 1 → unchanged.
        updates, state = transform.update(grads, state, params)
        for k in params:  # torch: clip_grad_norm_, then SGD adds the decay to the clipped gradient.
            expected = -(factor * np.asarray(grads[k]) + 0.5 * params[k])
            np.testing.assert_allclose(np.asarray(updates[k]), expected, rtol=1e-6)


def test_validation_rejects_before_anything_is_written(tmp_path):
    config = _tiny(total_steps=-1)
    with pytest.raises(UserError, match="total_steps=-1"):
        train.train_and_evaluate(config, str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
