"""benchmarks/cpu_levers.py, conv_threads.py and profile_step.py end to end on tiny inputs: each
lever's process, its table row, and "same bits" telling a lever that computes the baseline's
parameters from one that does not; each layer's row with both convolution settings; a step's
traced ops."""

from helpers import run_benchmark, table_rows


def test_levers_table_on_the_tiny_vae():
    tiny = ("--configs=vae_mnist:tiny", "--rounds=1", "--steps=2")
    levers = "baseline,two_devices,concurrency_scheduler"
    done = run_benchmark("cpu_levers.py", *tiny, f"--levers={levers},no_such_lever")
    assert done.returncode == 2 and "no_such_lever" in done.stderr, done.stderr[-2000:]
    done = run_benchmark("cpu_levers.py", *tiny, f"--levers={levers}")
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
