"""The command line end to end, `python -m jvision.main` as a user runs it: every family's tiny
run (made once per test run, `conftest.trained`), resuming, and every bad input as one line that
leaves the workdir as it was (the one table of bad inputs)."""

import json
import os
import shutil
import subprocess
import sys

import helpers
import pytest
from helpers import ROOT, run_main
from tensorboard.backend.event_processing import event_accumulator


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("jvision: error:")]


def _results(workdir) -> dict:
    return json.loads((workdir / "results.json").read_text())


def test_tiny_vae_trains_logs_and_ends_with_one_line(trained):
    run = trained("vae_mnist")
    results = _results(run.workdir)
    assert results["step"] == 4
    assert 0 < results["metrics"]["test/nll_is_nats"] < 1000
    assert set(os.listdir(run.workdir / "checkpoints")) == {"2", "4"}
    assert json.loads((run.workdir / "config.json").read_text())["model"]["name"] == "vae"
    events = event_accumulator.EventAccumulator(str(run.workdir))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/kl_nats", "train/grad_norm", "test/nelbo_nats"} <= scalars
    assert {"reconstructions", "samples"} <= set(events.Tags()["images"])
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4]
    assert "Traceback" not in run.stderr and run.stdout == ""
    assert run.stderr.splitlines()[-1].endswith(f"results in {run.workdir / 'results.json'}")


def test_rerunning_resumes_and_a_changed_setting_is_named(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained("vae_mnist").workdir, workdir)
    results = _results(workdir)
    again = run_main("--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from step 4" in again.stderr and "settings changed" not in again.stderr
    assert _results(workdir) == results  # A finished run is only evaluated again.
    longer = run_main(
        "--config=configs/vae_mnist.py:tiny", f"--workdir={workdir}", "--config.total_steps=6"
    )
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "resuming with settings changed since: total_steps: 4 -> 6" in longer.stderr
    assert _results(workdir)["step"] == 6


@pytest.mark.parametrize(
    "run_args",
    [("draw_mnist",), ("draw_mnist_small",), ("draw_mnist", "--config.model.use_attention=False")],
    ids=["attention", "small", "no attention"],
)
def test_tiny_draw_variants_write_results_and_drawing_sequences(trained, run_args):
    workdir = trained(*run_args).workdir
    assert {"test/nelbo_nats", "test/nll_is_nats"} <= set(_results(workdir)["metrics"])
    images = sorted(os.listdir(workdir / "images"))
    assert images == ["generation.png", "reconstruction.png", "samples.png"]


def test_tiny_ssd_reports_map_and_per_class_ap(trained):
    from jvision.ops import coco_metrics

    workdir = trained("ssd_mnist").workdir
    metrics = _results(workdir)["metrics"]
    coco = {f"test/{name}" for name in coco_metrics.METRICS}
    assert set(metrics) == {"test/mAP", *(f"test/AP_{d}" for d in range(10)), *coco}
    assert 0 < metrics["test/coco_AP50"] <= 1 and metrics["test/coco_AP_large"] == -1.0
    per_class = [metrics[f"test/AP_{d}"] for d in range(10)]
    # The mean of the ten APs (each summed in float64 by the scorer: ≤ 10 roundings of 2⁻⁵³).
    assert metrics["test/mAP"] == pytest.approx(sum(per_class) / 10, rel=1e-14, abs=1e-300)
    # Four steps in, a few detections already land on digits: a detector finding nothing fails.
    assert metrics["test/mAP"] > 0 and all(0 <= ap <= 1 for ap in per_class)
    assert (workdir / "images" / "detections.png").exists()


@pytest.mark.parametrize("kind", ["patchvae", "vae"])
def test_tiny_patchvae_and_its_baseline(trained, kind):
    workdir = trained(
        "patchvae_mnist", *([] if kind == "patchvae" else ["--config.model.kind=vae"])
    ).workdir
    metrics = _results(workdir)["metrics"]
    assert {"test/loss", "test/recon", "test/kl_appearance", "test/nll_is_nats"} <= set(metrics)
    assert ("test/kl_occurrence" in metrics) == (kind == "patchvae")
    images = set(os.listdir(workdir / "images"))
    parts = {"part_occurrence.png", "part_patches.png"}
    assert images == {"reconstructions.png"} | (parts if kind == "patchvae" else set())


def test_tiny_transfer_from_a_tiny_pretrained_workdir(trained):
    pretrained = trained("patchvae_mnist").workdir
    workdir = trained("transfer_mnist", f"--config.init_from.workdir={pretrained}").workdir
    assert set(_results(workdir)["metrics"]) == {"test/loss", "test/top1"}


def test_runs_and_logs_without_tensorflow(tmp_path):
    """GPU and TPU images often lack TensorFlow: training and TensorBoard logs work without it
    (a run never imports it; this checks it cannot)."""
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
    assert _results(tmp_path)["step"] == 4
    events = event_accumulator.EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"train/loss", "test/nelbo_nats"} <= set(events.Tags()["scalars"])
    assert {"reconstructions", "samples"} <= set(events.Tags()["images"])


# ----------------------------------------------------------------------------- bad input


def _snapshot(root):
    if not os.path.exists(root):
        return None
    if os.path.isfile(root):
        return open(root, "rb").read()
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


BAD_INPUTS = [
    # (case, arguments, expected text in the one error line, workdir: "new" | "finished" | ...)
    ("workdir is a file", [], "is a file, not a directory", "file"),
    ("workdir cannot be made", [], "--workdir /proc/jvision_", "proc"),
    ("empty workdir", [], "--workdir is empty", "empty"),
    ("no workdir", [], "--workdir is required", "none"),
    (
        "bad config argument",
        ["--config=configs/vae_mnist.py:huge"],
        "unknown config argument",
        "new",
    ),
    ("no such config", ["--config=configs/nope.py"], "configs/nope.py does not exist", "new"),
    (
        "override without =",
        ["--config.seed"],
        "write config overrides as --config.KEY=VALUE",
        "new",
    ),
    ("batch_size 0", ["--config.batch_size=0"], "batch_size=0: use 1 or more", "new"),
    ("negative seed", ["--config.seed=-5"], "seed=-5: use 0 to 4294967295", "new"),
    ("negative steps", ["--config.total_steps=-1"], "total_steps=-1: use 0 or more", "new"),
    ("zero period", ["--config.ckpt_every_steps=0"], "ckpt_every_steps=0: use 1 or more", "new"),
    ("negative rate", ["--config.optimizer.learning_rate=-1"], "use a finite value", "new"),
    ("negative clip", ["--config.optimizer.clip_norm=-1.0"], "clip_norm=-1.0", "new"),
    ("unknown key", ["--config.total_step=1"], "did you mean total_steps", "new"),
    ("unknown model", ["--config.model.name=vqvae"], "unknown model.name 'vqvae'", "new"),
    ("a size of 0", ["--config.model.latent_dim=0"], "does not build with this config", "new"),
    ("indivisible batch", ["--config.batch_size=12"], "not divisible by 8 devices", "new"),
    ("data not prepared", ["--config.data.name=mnist"], "jvision.data.prepare", "new"),
    ("another model", ["--config.model.latent_dim=6"], "written for a different model", "finished"),
    ("results without checkpoints", [], "has a results.json but no checkpoints", "no checkpoints"),
]


@pytest.mark.parametrize(
    "case, args, message, workdir_kind", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_line_and_leaves_the_workdir_as_it_was(
    tmp_path, trained, case, args, message, workdir_kind
):
    workdir = tmp_path / "workdir"
    if workdir_kind == "file":
        workdir.write_text("not a directory")
    elif workdir_kind == "proc":
        workdir = f"/proc/jvision_{os.getpid()}"
    elif workdir_kind in ("finished", "no checkpoints"):
        shutil.copytree(trained("vae_mnist").workdir, workdir)
        if workdir_kind == "no checkpoints":
            shutil.rmtree(workdir / "checkpoints")
    workdir_path = workdir if not isinstance(workdir, str) else None
    before = _snapshot(workdir_path) if workdir_path else None
    if case == "data not prepared":
        args = [*args, f"--config.data.data_dir={tmp_path / 'no_data'}"]
    config = (
        []
        if any(a.startswith("--config=") for a in args)
        else ["--config=configs/vae_mnist.py:tiny"]
    )
    where = {"empty": ["--workdir="], "none": []}.get(workdir_kind, [f"--workdir={workdir}"])
    result = run_main(*config, *where, *args)
    lines = error_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1, result.stderr[-3000:]
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    if workdir_path:
        assert _snapshot(workdir_path) == before  # Byte for byte; None: still not there.


def test_the_tests_fork_server_runs_a_module_as_python_m_does(tmp_path, monkeypatch):
    """`helpers.run_module` forks its runs from a server that imported JAX once: what such a run
    prints and returns is what `python -m` prints and returns. The server must serve: it refuses
    when a library it imports starts a thread or prints (see `forkserver.py`)."""
    assert helpers._ForkServer.get() is not None
    args = ("--config=configs/vae_mnist.py:tiny", f"--workdir={tmp_path}", "--config.seed=x")
    forked = run_main(*args)
    monkeypatch.setenv("JVISION_TEST_FORK", "0")
    started = run_main(*args)
    assert forked.returncode == started.returncode == 1
    assert (forked.stdout, forked.stderr) == (started.stdout, started.stderr)
    assert forked.stderr.startswith("jvision: error:"), forked.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.data.name=mnits", "unknown data.name 'mnits'"),
        ("--config.evals.test.type=nope", "evals.test.type='nope' is unknown"),
        ("--config.model.name=vqvae", "unknown model.name 'vqvae'"),
        ("--config.total_step=1", "did you mean total_steps"),
        ("--config.optimizer.learning_rate=-1", "use a finite value"),
    ],
    ids=["dataset", "metric", "model", "key", "value"],
)
def test_bad_values_are_refused_before_jax_is_imported(tmp_path, override, message):
    """The one line comes in a fraction of a second: from the flags, before JAX, TFDS or Flax
    are imported (`python -X importtime` lists every module a process imports)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "jvision.main"]
        + ["--config=configs/vae_mnist.py:tiny", f"--workdir={tmp_path / 'w'}", override],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = error_lines(result.stderr)
    assert result.returncode == 1 and len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line
    }
    assert "json" in imported  # The list is there ...
    assert not imported & {"jax", "flax", "tensorflow_datasets", "orbax"}  # ... without these.
    assert not (tmp_path / "w").exists()
