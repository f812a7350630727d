"""benchmarks/cpu_levers.py and conv_threads.py end to end on tiny inputs: each lever's process,
its table row, and "same bits" telling a lever that computes the baseline's parameters from one
that does not; each layer's row with both convolution settings."""

import os
import subprocess
import sys

from helpers import ROOT


def _benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """The benchmark as a user runs it: its own process, XLA_FLAGS unset."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [sys.executable, os.path.join(ROOT, "benchmarks", script), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_levers_table_on_the_tiny_vae():
    tiny = ("--configs=vae_mnist:tiny", "--rounds=1", "--steps=2")
    levers = "baseline,two_devices,concurrency_scheduler"
    done = _benchmark("cpu_levers.py", *tiny, f"--levers={levers},no_such_lever")
    assert done.returncode == 2 and "no_such_lever" in done.stderr, done.stderr[-2000:]
    done = _benchmark("cpu_levers.py", *tiny, f"--levers={levers}")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {
        line.split("|")[2].strip(): [cell.strip() for cell in line.split("|")[3:-1]]
        for line in done.stdout.splitlines()
        if line.startswith("| `vae_mnist:tiny`")
    }
    assert set(rows) == {"baseline", "two_devices", "concurrency_scheduler"}, done.stdout
    assert rows["baseline"][1] == "1.00×" and rows["baseline"][-1] == "same"
    # Two devices sum the batch's gradient in another order; the scheduler only reorders.
    assert rows["two_devices"][-1] == "differ" and rows["concurrency_scheduler"][-1] == "same"
    for cells in rows.values():
        assert float(cells[0].split()[0]) > 0 and float(cells[2]) > 0


def test_conv_threads_times_every_layer_under_both_settings():
    """benchmarks/conv_threads.py: a row per layer and pass, each with both settings' times."""
    done = _benchmark("conv_threads.py", "--repeats=1")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert len(rows) == 12, done.stdout
    for row in rows:
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[2] in ("forward", "both gradients")
        for timing in cells[3:]:
            ms, cpu = timing.rstrip(")").split(" (")
            assert float(ms) > 0 and float(cpu) > 0
