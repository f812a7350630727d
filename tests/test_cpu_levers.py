"""benchmarks/cpu_levers.py, compile_options.py, conv_threads.py, profile_step.py and
host_drift.py end to end on tiny inputs: each lever's process, its table row, and "same bits"
telling a lever that computes the baseline's parameters from one that does not; compiler options
that reproduce what the same option in `XLA_FLAGS` computes; each layer's row with both
convolution settings; a step's traced ops; the host's drift line."""

import os
import subprocess
import sys

from helpers import ROOT, run_benchmark, table_rows


def test_levers_table_on_the_tiny_vae():
    tiny = ("--configs=vae_mnist:tiny", "--rounds=1", "--steps=2")
    levers = "baseline,two_devices,concurrency_scheduler,malloc"
    done = run_benchmark("cpu_levers.py", *tiny, f"--levers={levers},no_such_lever")
    assert done.returncode == 2 and "no_such_lever" in done.stderr, done.stderr[-2000:]
    done = run_benchmark("cpu_levers.py", *tiny, f"--levers={levers}")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {
        line.split("|")[2].strip(): [cell.strip() for cell in line.split("|")[3:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("| `vae_mnist:tiny`")
    }
    assert set(rows) == {"baseline", "two_devices", "concurrency_scheduler", "malloc"}, done.stdout
    assert rows["baseline"][1] == "1.00×" and rows["baseline"][-1] == "same"
    # Two devices sum the batch's gradient in another order; the scheduler only reorders; malloc
    # only moves the bytes.
    assert rows["two_devices"][-1] == "differ" and rows["concurrency_scheduler"][-1] == "same"
    assert rows["malloc"][-1] == "same"
    for cells in rows.values():
        assert float(cells[0].split()[0]) > 0 and float(cells[3]) > 0
        assert float(cells[2].replace(",", "")) >= 0  # Page faults per step.


def test_compile_options_compute_what_the_same_setting_in_xla_flags_does():
    """A setting given as compiler options computes the bits the same setting in `XLA_FLAGS`
    does: in a process started with it in `XLA_FLAGS` (the `jvision` row then compiles with
    that), its row is "same". And the options are not ignored: with nothing in YNNPACK, asked
    either way, the compiled step has no YNNPACK op, whatever the process's flags."""
    command = [sys.executable, os.path.join("benchmarks", "compile_options.py")]
    tiny = ["--configs=vae_mnist:tiny", "--rounds=2", "--steps=1"]
    nothing = "-individual_convolution,-individual_dot,-reduce,-dot,-eltwise"
    in_flags = {"xla_defaults": "+individual_convolution", "no_ynnpack": nothing}
    for setting, value in in_flags.items():
        env = {**os.environ, "XLA_FLAGS": f"--xla_cpu_experimental_ynn_fusion_type={value}"}
        done = subprocess.run(
            [*command, *tiny, "--settings=xla_defaults,no_ynnpack"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert env["XLA_FLAGS"] in done.stdout  # The header names the process's setting.
        rows = {cells[1]: cells[2:] for cells in table_rows(done.stdout)}
        assert list(rows) == ["jvision", "xla_defaults", "no_ynnpack"], done.stdout
        assert rows["jvision"][2] == "1.00×" and rows["jvision"][-1] == "same"
        assert rows[setting][-1] == "same", done.stdout
        assert rows["no_ynnpack"][0] == "0", done.stdout
        for cells in rows.values():
            assert int(cells[0]) >= 0 and float(cells[1].split()[0]) > 0 and float(cells[3]) > 0
        if setting == "no_ynnpack":
            assert rows["jvision"][0] == "0", done.stdout
    for bad, said in (
        ("--settings=jvision,no_such_setting", "no_such_setting"),
        ("--rounds=0", "at least 1"),
        ("--configs=no_such_config", "no_such_config.py does not exist"),
    ):
        done = run_benchmark("compile_options.py", *tiny[1:], bad)
        assert done.returncode == 2 and said in done.stderr, done.stderr[-2000:]


def test_conv_threads_times_every_layer_under_both_settings():
    """benchmarks/conv_threads.py: a row per layer and pass, each with both settings' times."""
    done = run_benchmark("conv_threads.py", "--repeats=1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = table_rows(done.stdout)
    assert len(rows) == 12, done.stdout
    for cells in rows:
        assert cells[2] in ("forward", "both gradients")
        for timing in cells[3:]:
            ms, cpu = timing.rstrip(")").split(" (")
            assert float(ms) > 0 and float(cpu) > 0


def test_profile_step_lists_the_steps_ops_with_their_source(tmp_path):
    """benchmarks/profile_step.py: the step's time, the trace left where asked, and a row per op
    with its traced time, output shape and the JAX operation it came from."""
    args = ("--config=configs/vae_mnist.py:tiny", "--steps=2", "--top=8", f"--trace_dir={tmp_path}")
    done = run_benchmark("profile_step.py", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ms per step untraced" in done.stdout and str(tmp_path) in done.stdout
    rows = table_rows(done.stdout)
    assert len(rows) == 8, done.stdout
    assert float(rows[0][1]) > 0  # The longest op took time.
    assert any(cells[3].startswith("jit(train_step)") for cells in rows), done.stdout
    assert list((tmp_path / "plugins" / "profile").glob("*/*.trace.json.gz"))


def test_host_drift_times_the_step_twice_and_numpy_between():
    done = run_benchmark("host_drift.py", "--config=vae_mnist:tiny", "--steps=2")
    assert done.returncode == 0, done.stderr[-2000:]
    words = done.stdout.split()
    assert words[0::2] == ["step", "conv", "numpy", "step-again"], done.stdout
    assert all(float(ms) > 0 for ms in words[1::2]), done.stdout
    refusals = (("--steps=0", "at least 1"), ("--config=no_such", "no_such.py does not exist"))
    for bad, said in refusals:
        done = run_benchmark("host_drift.py", bad)
        assert done.returncode == 2 and said in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
