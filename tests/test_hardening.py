"""Faults a long run meets, reproduced: damaged checkpoints, signals at any moment (starting up
included), two runs on one workdir, a full or read-only disk, odd paths. Each ends in one line
and a workdir whose results, checkpoints and pictures agree. (Bad input: tests/test_main.py.)"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import ROOT, load_config, run_main, run_module

from jvision import metrics, train
from jvision.errors import UserError
from jvision.safety import checkpoints, checksums, files, reader, stops


def _tiny(**overrides):
    config = load_config("vae_mnist", "tiny")
    config.update(overrides)
    return config


def _params(workdir):
    return jax.tree.leaves(reader.read_arrays(workdir)[0])


def _assert_same_params(a, b):
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture
def unbroken(trained):
    """A 6-step run (checkpoints every 2 steps), to compare interrupted runs with."""
    return trained("vae_mnist", "--config.total_steps=6").workdir


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
        # No checksums to vouch for it: not trusted, even when it reads.
        lambda step: ((step / checksums.CHECKSUMS_FILE).unlink(), _flip(_array_file(step))),
    ],
    ids=["flipped bytes", "truncated", "missing part", "unsealed"],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_resumes_from_the_last_good_one(
    tmp_path, trained, unbroken, damage, caplog
):
    shutil.copytree(trained("vae_mnist").workdir, tmp_path, dirs_exist_ok=True)
    assert (tmp_path / "checkpoints" / "4" / checksums.CHECKSUMS_FILE).exists()  # Sealed.
    damage(tmp_path / "checkpoints" / "4")
    train.train_and_evaluate(_tiny(total_steps=6), str(tmp_path))
    assert (tmp_path / checkpoints.DAMAGED_DIR / "4").is_dir()  # Kept for inspection.
    assert "resuming from step 2, the newest intact checkpoint; skipped damaged step(s) 4" in (
        caplog.text
    )
    _assert_same_params(tmp_path, unbroken)  # Resumed from 2 exactly.


def test_when_no_checkpoint_is_intact_the_run_stops(tmp_path, trained):
    shutil.copytree(trained("vae_mnist").workdir, tmp_path, dirs_exist_ok=True)
    for step in ("2", "4"):
        _flip(_array_file(tmp_path / "checkpoints" / step))
    with pytest.raises(UserError, match="no intact checkpoint left .*step\\(s\\) 4, 2 are damaged"):
        train.train_and_evaluate(_tiny(total_steps=6), str(tmp_path))


def test_an_intact_checkpoint_that_does_not_fit_is_not_called_damaged(tmp_path, trained):
    shutil.copytree(trained("vae_mnist").workdir, tmp_path, dirs_exist_ok=True)
    config = _tiny(total_steps=6)
    config.optimizer.name = "sgd"  # Another optimizer state: the checkpoint's files are fine.
    with pytest.raises(UserError, match="is intact .* does not fit this version's model"):
        train.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / checkpoints.DAMAGED_DIR).exists()


def test_evaluating_a_damaged_checkpoint_says_so(tmp_path, trained):
    from jvision import evaluate

    shutil.copytree(trained("vae_mnist").workdir, tmp_path, dirs_exist_ok=True)
    _flip(_array_file(tmp_path / "checkpoints" / "4"))
    with pytest.raises(UserError, match="checkpoint .*/4 is damaged \\(model/.* has changed\\)"):
        evaluate.load(tmp_path)


# ----------------------------------------------------------------------------- signals


def test_a_signal_during_the_final_evaluation_lets_the_run_end_complete(
    tmp_path, monkeypatch, caplog
):
    """The training is done: the final evaluation, its checkpoint and results.json finish, the
    log says so, and the run returns its results (the command exits 0)."""
    _signal_when(monkeypatch, metrics, "run_all", signal.SIGTERM, 2)  # Steps 2 and 4 (final).
    results = train.train_and_evaluate(_tiny(), str(tmp_path))
    assert files.finished_step(files.path(tmp_path)) == 4
    assert json.loads((tmp_path / "results.json").read_text())["metrics"] == results
    assert "SIGTERM: the training is done; finishing its final evaluation" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # Handlers restored.


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
        ("during a save", checkpoints.Checkpoints, "save", signal.SIGTERM, 1),  # Step 2, in flight.
        ("during an evaluation", metrics, "run_all", signal.SIGINT, 1),  # Step 2.
    ],
)
def test_a_signal_at_any_moment_saves_the_current_step_and_resumes_exactly(
    tmp_path, unbroken, monkeypatch, where, module, name, number, at_call
):
    _signal_when(monkeypatch, module, name, number, at_call)
    with pytest.raises(stops.Stopped) as stopped:
        train.train_and_evaluate(_tiny(total_steps=6), str(tmp_path))
    monkeypatch.undo()
    step = stopped.value.step
    assert 0 < step < 6 and (tmp_path / "checkpoints" / str(step)).is_dir()
    assert stopped.value.signal_name == signal.Signals(number).name
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # Handlers restored.
    train.train_and_evaluate(_tiny(total_steps=6), str(tmp_path))
    _assert_same_params(tmp_path, unbroken)


def _main(*args, **kwargs):
    return _command("jvision.main", *args, **kwargs)


def _command(module, *args, **kwargs):
    """`python -m MODULE ARGS`, a real process, its output read as it comes."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,  # Lines, as they come.
        **kwargs,
    )


def _wait_for(path, process, timeout=240):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _wait_until_importing_jax(process, timeout=60):
    """Blocks until `process` has mapped JAX's compiled core: it is importing its modules (a
    command prints nothing before its imports are done)."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{process.pid}/maps") as maps:
            if "jaxlib/libjax_common.so" in maps.read():
                return
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "JAX was never imported"
        time.sleep(0.005)


LONG_RUN = ["--config=configs/vae_mnist.py:tiny", "--config.total_steps=100000"]


def test_sigterm_from_outside_exits_75_with_one_line(tmp_path):
    workdir = tmp_path / "run"
    run = _main(*LONG_RUN, f"--workdir={workdir}")
    _wait_for(workdir / "checkpoints" / "2", run)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == stops.EXIT_STATUS, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("jvision: stopped by SIGTERM at step") and "Traceback" not in stderr
    assert not [line for line in stderr.splitlines() if line.startswith("jvision: error")]
    stopped_at = int(last.split(" at step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(stopped_at)).is_dir()


def test_a_second_ctrl_c_exits_at_once():
    """While a stop is under way (a save, an evaluation), a second Ctrl-C ends the process."""
    script = (
        "import os, signal, time\n"
        "from jvision.safety import stops\n"
        "with stops.StopRequests() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert stop.should_stop(1) and stop.signal_name == 'SIGINT'\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)  # A long save: the second Ctrl-C must not wait for it.\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == stops.INTERRUPTED_STATUS, result.stderr[-2000:]
    assert "jvision: interrupted; the workdir resumes from its last checkpoint" in result.stderr


# ----------------------------------------------------------------------------- one writer


def test_a_second_run_on_a_workdir_in_use_is_refused_and_no_lock_outlives_kill_9(tmp_path):
    workdir = tmp_path / "run"
    first = _main(*LONG_RUN, f"--workdir={workdir}")
    _wait_for(workdir / "checkpoints" / "2", first)
    second = run_main(*LONG_RUN, f"--workdir={workdir}")
    errors = [line for line in second.stderr.splitlines() if line.startswith("jvision: error:")]
    assert second.returncode == 1 and len(errors) == 1, second.stderr[-3000:]
    assert f"is in use by another run (pid {first.pid} on " in errors[0]
    first.kill()  # kill -9: the OS drops the lock.
    first.wait()
    third = run_main(
        "--config=configs/vae_mnist.py:tiny", "--config.total_steps=2", f"--workdir={workdir}"
    )
    assert third.returncode == 0, third.stderr[-3000:]
    assert not (workdir / ".jvision_lock.json").exists()


@pytest.mark.parametrize(
    "number, when",
    [
        (signal.SIGTERM, "importing"),  # Python is importing JAX, Orbax, Grain.
        (signal.SIGTERM, "jvision: train data:"),  # The data are read; the model is next.
        (signal.SIGINT, "jvision: model vae:"),  # The model is built; the step compiles.
    ],
    ids=["SIGTERM while importing", "SIGTERM after the data", "Ctrl-C while compiling"],
)
def test_a_signal_while_starting_exits_75_with_one_line(tmp_path, number, when):
    """A preemption or Ctrl-C in the first seconds, while the imports, the data or the compile
    are under way, ends in exit status 75 (a supervisor requeues it) and one line, no
    traceback, and nothing lost."""
    workdir = tmp_path / "run"
    run = _main(*LONG_RUN, f"--workdir={workdir}")
    if when == "importing":
        _wait_until_importing_jax(run)
    else:
        for line in run.stderr:
            if line.startswith(when):
                break
    run.send_signal(number)
    _, rest = run.communicate(timeout=120)
    assert run.returncode == stops.EXIT_STATUS, rest[-3000:]
    assert "Traceback" not in rest
    last = rest.strip().splitlines()[-1]
    assert last.startswith(f"jvision: stopped by {signal.Signals(number).name}"), rest[-2000:]
    assert not (workdir / ".jvision_lock.json").exists()
    # Nothing was lost: the same command then trains from the start.
    done = run_main("--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "module, number",
    [
        ("jvision.evaluate", signal.SIGTERM),
        ("jvision.evaluate", signal.SIGINT),
        ("jvision.sweep", signal.SIGTERM),
    ],
    ids=["evaluate, SIGTERM", "evaluate, Ctrl-C", "sweep, SIGTERM"],
)
def test_every_command_stops_with_one_line_from_its_first_instant(
    tmp_path, trained, module, number
):
    """`python -m jvision.evaluate` and `jvision.sweep` stopped while Python imports their
    package (JAX, Flax, Orbax): exit status 75 and one line, as the trainer."""
    if module == "jvision.evaluate":
        arguments = [f"--workdir={trained('vae_mnist').workdir}"]
    else:
        arguments = [*LONG_RUN, f"--workdir={tmp_path / 'sweep'}", "--seeds=0"]
    process = _command(module, *arguments)
    _wait_until_importing_jax(process)
    process.send_signal(number)
    out, err = process.communicate(timeout=120)
    assert process.returncode == stops.EXIT_STATUS, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"jvision: stopped by {number.name}"), err
    assert out == ""


def test_a_lock_refusal_never_names_a_dead_run(tmp_path):
    """kill -9 leaves the holder's record; while another run holds the lock (and has not
    recorded itself yet), a third is told who holds it, not the dead pid."""
    import json

    workdir = tmp_path / "run"
    workdir.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    (workdir / ".jvision_lock.json").write_text(
        json.dumps({"pid": int(dead), "host": os.uname().nodename, "since": "earlier"})
    )
    holder = subprocess.Popen(  # Holds the lock as a starting run would.
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"d = os.open({str(workdir)!r}, os.O_RDONLY); fcntl.flock(d, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_main("--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}")
    finally:
        holder.kill()
    errors = [line for line in refused.stderr.splitlines() if line.startswith("jvision: error:")]
    assert refused.returncode == 1 and len(errors) == 1, refused.stderr[-2000:]
    assert "the record there is a dead run's" in errors[0] and f"pid {dead}" not in errors[0]


# ----------------------------------------------------------------------------- the storage

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (`small_disk(kib)`), remountable (`remount(options)`)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = []

    def make(kib: int, options: str = ""):
        flags = f"size={kib}k" + (f",{options}" if options else "")
        action = ["-o", f"remount,{flags}"] if mounted else ["-t", "tmpfs", "-o", flags, "tmpfs"]
        subprocess.run(["mount", *action, str(mount)], check=True)
        mounted.append(True)
        return mount

    yield make
    if mounted:
        subprocess.run(["umount", str(mount)], check=False)


def _leftovers(workdir):
    """What a failed run must not leave: temporary files, unfinished saves, its lock record."""
    return [
        str(p.relative_to(workdir))
        for p in workdir.rglob("*")
        if p.name.endswith(".tmp")
        or checkpoints.TEMPORARY_MARK in p.name
        or p.name == ".jvision_lock.json"
    ]


@needs_root
@pytest.mark.parametrize("kib", [300, 450, 600], ids=["events", "a checkpoint", "the last save"])
def test_a_full_disk_is_one_line_and_the_workdir_never_lies(small_disk, kib):
    """A disk that fills up while events, a checkpoint or the last save are written: one line,
    no traceback, no lock or half-written picture left, and a rerun with room completes;
    results.json (when written) names a committed step."""
    disk = small_disk(kib)
    workdir = disk / "run"
    failed = run_main("--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}")
    errors = [line for line in failed.stderr.splitlines() if line.startswith("jvision: error:")]
    assert failed.returncode == 1 and len(errors) == 1, failed.stderr[-3000:]
    assert "no space left on the device" in errors[0] and "Traceback" not in failed.stderr
    assert errors[0] == failed.stderr.strip().splitlines()[-1]
    assert _leftovers(workdir) == []
    assert not (workdir / "results.json").exists()  # Its checkpoint never committed.
    assert all(p.stat().st_size > 0 for p in workdir.rglob("*.png"))
    small_disk(4096)  # Room again: the same command resumes and finishes.
    done = run_main("--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-3000:]
    from jvision.safety import files

    assert files.finished_step(workdir) == 4


@needs_root
def test_pictures_on_a_full_disk_are_one_line_naming_the_file_and_the_metrics_are_printed(
    small_disk, trained
):
    """`jvision.evaluate --images` onto a full disk: the metrics are on stdout already, then one
    line names the picture that could not be written."""
    disk = small_disk(64)
    (disk / "pics").mkdir()
    filler = open(disk / "filler", "wb", buffering=0)  # noqa: SIM115
    with filler, pytest.raises(OSError, match="No space left"):
        while True:  # Every page taken.
            filler.write(b"\0" * 4096)
    workdir = trained("vae_mnist").workdir
    result = run_module("jvision.evaluate", f"--workdir={workdir}", f"--images={disk / 'pics'}")
    errors = [line for line in result.stderr.splitlines() if line.startswith("jvision: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert "no space left on the device" in errors[0] and f"{disk / 'pics'}/" in errors[0]
    assert errors[0].split(f"{disk / 'pics'}/")[1].split(")")[0].endswith(".png"), errors[0]
    assert json.loads(result.stdout) == json.loads((workdir / "results.json").read_text())
    assert not [p.name for p in (disk / "pics").iterdir() if p.name.endswith(".tmp")]


@needs_root
def test_a_read_only_workdir_is_one_line_and_evaluates(small_disk, trained):
    disk = small_disk(4096)
    shutil.copytree(trained("vae_mnist").workdir, disk / "run")
    small_disk(4096, "ro")
    rerun = run_main("--config=configs/vae_mnist.py:tiny", f"--workdir={disk / 'run'}")
    errors = [line for line in rerun.stderr.splitlines() if line.startswith("jvision: error:")]
    assert rerun.returncode == 1 and len(errors) == 1, rerun.stderr[-3000:]
    assert "read-only file system" in errors[0] and "Traceback" not in rerun.stderr
    from jvision import evaluate

    assert evaluate.load(disk / "run").evaluate()["test/nelbo_nats"] > 0


@needs_root
def test_a_read_only_data_directory_is_one_line(small_disk, tmp_path):
    data = small_disk(1024, "ro")
    result = run_main(
        "--config=configs/vae_mnist.py:tiny",
        f"--workdir={tmp_path / 'w'}",
        f"--config.data.data_dir={data}",
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("jvision: error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr[-3000:]
    assert "read-only file system" in errors[0] and "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- paths and 0


@pytest.mark.parametrize("name", ["run[1]", "a b%20#?*%"], ids=["brackets", "others"])
def test_any_character_works_in_a_workdir(tmp_path, name):
    """A workdir named with glob or URL characters trains, resumes and is read back (Orbax and
    tensorstore would read `[1]`, `*`, `?` as patterns)."""
    from jvision import evaluate

    workdir = tmp_path / name
    train.train_and_evaluate(_tiny(total_steps=2), str(workdir))
    train.train_and_evaluate(_tiny(total_steps=4), str(workdir))  # Resumes from step 2.
    assert evaluate.load(workdir).step == 4
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_zero_steps_evaluates_the_initial_model_and_can_be_extended(tmp_path):
    results = train.train_and_evaluate(_tiny(total_steps=0), str(tmp_path))
    assert results["test/nelbo_nats"] > 0
    assert os.listdir(tmp_path / "checkpoints") == ["0"]
    train.train_and_evaluate(_tiny(total_steps=2), str(tmp_path))
    from jvision.safety import files

    assert files.finished_step(tmp_path) == 2
