"""benchmarks/compare.py end to end on one tiny config: the Markdown table and the JSON line.

compare.py runs in a subprocess: it must set its thread counts before JAX and PyTorch are imported,
and it compares on one device, where these tests run with 8 simulated ones.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from helpers import ROOT  # noqa: E402

COLUMNS = (
    "config",
    "batch",
    "dtype, data",
    "jvision ms/step",
    "PyTorch eager ms/step",
    "torch.compile ms/step",
    "jvision speed-up vs eager (eager ms / jvision ms)",
    "jvision speed-up vs compiled (compiled ms / jvision ms)",
    "jvision compile s",
    "torch.compile s",
    "GFLOP/step",
    "GFLOP/s (% of matmul peak): jvision / eager / compiled",
    "peak memory MiB: jvision / eager / compiled",
    "CPU time / wall time: jvision / eager / compiled",
    "pipeline vs step, batches/s",
)


@pytest.mark.parametrize("placement", ["auto", "device"])
def test_compare_tiny_vae(tmp_path, placement):
    """`auto` keeps the data on the host on a CPU; with `device` the twin trains on the batch the
    jitted step makes from its indices."""
    markdown = tmp_path / "table.md"
    where = "host" if placement == "auto" else "device"
    command = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "compare.py"),
        "--configs=vae_mnist:tiny",
        "--rounds=1",
        "--steps=2",
        "--warmup=1",
        "--threads=1",
        "--no_compile",
        "--pipeline_batches=5",
        "--matmul_size=256",
        f"--placement={placement}",
        f"--markdown={markdown}",
    ]
    # The conftest's environment (TFDS dir, JAX_PLATFORMS=cpu, fast compiles); compare.py drops
    # the simulated device count itself.
    done = subprocess.run(
        command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()

    header = next(line for line in lines if line.startswith("| config |"))
    assert [c.strip() for c in header.strip("|").split("|")] == list(COLUMNS)
    rows = [line for line in lines if line.startswith("| `vae_mnist:tiny` |")]
    assert len(rows) == 1, done.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == len(COLUMNS)
    assert cells[1] == "16" and cells[2] == f"float32, {where}"
    assert float(cells[3].split()[0]) > 0 and float(cells[4].split()[0]) > 0
    assert cells[5] == "skipped"
    assert cells[6].endswith("×")
    assert any(line.startswith("# CPU ") for line in lines)  # The machine line.

    result = json.loads(next(line for line in lines if line.startswith('{"machine"')))
    assert result["machine"]["threads"] == 1
    assert result["machine"]["jax_devices"] == ["cpu:0"]
    (row,) = result["results"]
    assert row["config"] == "vae_mnist:tiny" and row["batch"] == 16
    assert (row["dtype"], row["placement"]) == ("float32", where)
    assert row["jvision_ms"] > 0 and row["eager_ms"] > 0 and row["flops"] > 0
    assert row["jvision_memory"]["peak"] > 0 and row["eager_memory_bytes"] > 0
    assert row["pipeline_batches_per_s"] > 0

    written = markdown.read_text()
    assert header in written and rows[0] in written


def test_contention_is_other_processes_time_not_a_low_cpu_per_wall():
    """An idle machine where XLA keeps 1.3 of 2 cores busy is not contended; other processes
    taking a quarter of a core or more are, whatever the frameworks' own use."""
    sys.path.insert(0, ROOT)
    from benchmarks import table

    machine = {"gpu": False, "threads": 2, "loadavg_start": "1.0", "loadavg_end": "1.0"}
    row = {"config": "vae_mnist", "jvision_busy_threads": 3, "eager_busy_threads": 2}
    idle = {**row, "jvision_cpu_per_wall": 1.3, "eager_cpu_per_wall": 1.96}
    idle.update(jvision_others_per_wall=0.02, eager_others_per_wall=0.0)
    assert not any("contended" in note for note in table.thread_notes(idle, machine))
    shared = {**idle, "eager_others_per_wall": 0.6}
    (note,) = [note for note in table.thread_notes(shared, machine) if "contended" in note]
    assert "eager 0.60 cores" in note and "jvision" not in note.split("used")[1].split("cores")[0]
