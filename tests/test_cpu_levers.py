"""benchmarks/cpu_levers.py end to end on a tiny config: each lever's process, its table row, and
"same bits" telling a lever that computes the baseline's parameters from one that does not."""

import os
import subprocess
import sys

from helpers import ROOT


def test_levers_table_on_the_tiny_vae():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "cpu_levers.py"),
            "--configs=vae_mnist:tiny",
            "--levers=baseline,two_devices,concurrency_scheduler,no_such_lever",
            "--rounds=1",
            "--steps=2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "no_such_lever" in done.stderr, done.stderr[-2000:]
    done = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "cpu_levers.py"),
            "--configs=vae_mnist:tiny",
            "--levers=baseline,two_devices,concurrency_scheduler",
            "--rounds=1",
            "--steps=2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
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
