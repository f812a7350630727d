"""The probe and the plan of `device/draw_full_mnist.sh`.

    python device/draw_probe.py probe --config=configs/draw_full_mnist.py --out=probe.json \
        [--batches=64,256,512,1024] [--dtypes=float32,bfloat16] [--steps=20] [--deadline_s=110]
    python device/draw_probe.py plan --probe=probe.json --seconds=S --out=plan.json \
        [--dtype=float32] [--steps=N] [--nll_split=test[:500]]

`probe` times the config's train step at each batch size, as `benchmarks/step_time.py` does
(`benchmarks/jvision_step.compile_step`: jitted, on one batch, after warm-up steps), in three
phases, in this order: float32 with the data on the device (`data.placement=device`: each batch
gathered and binarized inside the step, so the step time includes the input); float32 with the
data on the host (the step on a batch already on the device, and the Grain pipeline's batches/s
on its own, after the steps); then each other dtype on the device. Each measurement is written
to `--out` as soon as it is made; one that would end after `--deadline_s` (judged by the longest
so far) is skipped and named. The split is read once for all measurements.

`plan` picks the batch size and placement that train on the most digits per second in `--dtype`
(the host's rate is capped by its pipeline), and prints the trainer's overrides, one per line
(also in `--out` with the numbers behind them):

- learning rate = 1e-3 × sqrt(batch / 64) (square-root scaling from the config's rate at 64);
- schedule `rsqrt` after a linear warmup of 5% of the steps, its timescale twice the warmup
  (10% of the steps): the rate depends on the step alone, not on `total_steps`, so a resumed run
  with more steps continues the same schedule (a cosine would be stretched). Not the warmup
  itself: jvision/optim.py's rsqrt then divides by zero where the trainer logs the rate of step 1
  (optax's join evaluates it at count 0 - warmup);
- total_steps = SAFETY × (seconds − STARTUP_S − (EVALUATIONS − 1) × EVAL_S − FINAL_S) / step
  time, unless `--steps` gives it; evaluations (and checkpoints) at each quarter of the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # Run as a script: only device/ is on the path.
    sys.path.insert(0, ROOT)

BASE_BATCH, BASE_RATE = 64, 1e-3  # The config's batch size and learning rate.
WARMUP_FRACTION = 0.05
# The plan's allowance, in seconds, for what the run does besides its steps: start-up (imports,
# the split to the device, the step's compile), each evaluation before the last (test/nelbo_nats
# on 10,000 digits), and the final one (with the importance-sampled NLL and the pictures).
STARTUP_S, EVAL_S, FINAL_S = 45, 10, 60
EVALUATIONS = 4  # Over the run, the final one included.
SAFETY = 0.9  # Of the time left for steps, the share planned.
PHASES_FIRST = (("float32", "device"), ("float32", "host"))


def _write_json(path: str, content: dict) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump(content, file, indent=2)
    os.replace(temporary, path)


def _share_sources() -> None:
    """Every measurement reads the same in-memory copy of a split (the trainer's `Remembered`
    source), so the first one reads it and none times TFDS's reader."""
    from jvision.data import pipeline

    original, kept = pipeline._source, {}

    def shared(data, split):
        key = (data.name, split, data.data_dir)
        if key not in kept:
            kept[key] = original(data, split)
        return kept[key]

    pipeline._source = shared


def measure(
    spec: str, batch: int, dtype: str, placement: str, steps: int, warmup: int, input_batches: int
) -> dict:
    """One measurement: the step's compile time and ms per step (`steps` timed after `warmup`);
    the input's batches/s (`input_batches` timed)."""
    from benchmarks.jvision_step import compile_step
    from benchmarks.timing import load_config

    config = load_config(spec)
    config.batch_size, config.model.dtype, config.data.placement = batch, dtype, placement
    step = compile_step(config)
    step.run(0, warmup)
    start = time.perf_counter()
    step.run(warmup, steps)
    step_s = (time.perf_counter() - start) / steps
    next(step.data)  # Its prefetch buffer filled during the steps.
    start = time.perf_counter()
    for _ in range(input_batches):
        next(step.data)
    input_s = (time.perf_counter() - start) / input_batches
    # On the device the input is the step's own work; the host's pipeline runs beside the step.
    limit_s = step_s if step.placement == "device" else max(step_s, input_s)
    return {
        "batch": batch,
        "dtype": dtype,
        "placement": step.placement,
        "compile_s": round(step.compile_s, 2),
        "step_ms": round(step_s * 1e3, 3),
        "input_batches_per_s": round(1 / input_s, 1),
        "input": "indices" if step.placement == "device" else "batches",
        "digits_per_s": round(batch / limit_s, 1),
    }


def probe(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    import jax

    _share_sources()
    batches = [int(b) for b in args.batches.split(",")]
    dtypes = args.dtypes.split(",")
    phases = [p for p in PHASES_FIRST if p[0] in dtypes]
    phases += [(dtype, "device") for dtype in dtypes if dtype != "float32"]
    result = {
        "config": args.config,
        "devices": [str(d) for d in jax.devices()],
        "steps": args.steps,
        "measurements": [],
        "skipped": [],
    }
    longest = 0.0
    for dtype, placement in phases:
        for batch in batches:
            began = time.perf_counter()
            name = f"batch {batch}, {dtype}, {placement}"
            if began - started + longest > args.deadline_s:
                result["skipped"].append(name)
                print(f"probe: skipped {name}: it would end after {args.deadline_s} s", flush=True)
                continue
            try:
                row = measure(args.config, batch, dtype, placement, args.steps, 3, args.steps)
            except Exception as error:  # An out-of-memory batch, say: the others still count.
                row = {"batch": batch, "dtype": dtype, "placement": placement}
                row["error"] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            gc.collect()
            longest = max(longest, time.perf_counter() - began)
            result["measurements"].append(row)
            result["probe_s"] = round(time.perf_counter() - started, 1)
            _write_json(args.out, result)
            print(f"probe: {json.dumps(row)}", flush=True)
    result["probe_s"] = round(time.perf_counter() - started, 1)
    _write_json(args.out, result)


def choose(measurements: list[dict], dtype: str) -> dict:
    """The measurement of `dtype` that trains on the most digits per second (the smaller batch
    on a tie)."""
    rows = [m for m in measurements if m.get("dtype") == dtype and "digits_per_s" in m]
    if not rows:
        raise SystemExit(f"plan: error: the probe measured no {dtype} step")
    return max(rows, key=lambda m: (m["digits_per_s"], -m["batch"]))


def plan_steps(seconds: float, step_ms: float) -> int:
    """The steps that fit `seconds`, with the allowances of the module doc."""
    left = seconds - STARTUP_S - (EVALUATIONS - 1) * EVAL_S - FINAL_S
    return max(1, math.floor(SAFETY * left / (step_ms / 1e3)))


def plan(args: argparse.Namespace) -> None:
    with open(args.probe) as file:
        measured = json.load(file)
    best = choose(measured["measurements"], args.dtype)
    batch = best["batch"]
    planned = plan_steps(args.seconds, best["step_ms"])
    steps = args.steps or planned
    warmup = max(1, round(WARMUP_FRACTION * steps))
    rate = BASE_RATE * math.sqrt(batch / BASE_BATCH)
    every = math.ceil(steps / EVALUATIONS)
    overrides = [
        f"--config.batch_size={batch}",
        f"--config.data.placement={best['placement']}",
        f"--config.optimizer.learning_rate={rate:.6g}",
        "--config.optimizer.schedule=rsqrt",
        f"--config.optimizer.warmup_steps={warmup}",
        f"--config.optimizer.rsqrt_timescale={2 * warmup}",
        f"--config.total_steps={steps}",
        f"--config.eval_every_steps={every}",
        f"--config.ckpt_every_steps={every}",
        f"--config.log_every_steps={max(1, steps // 40)}",
        f"--config.evals.nll.split={args.nll_split}",
    ]
    if args.dtype != "float32":
        overrides.insert(2, f"--config.model.dtype={args.dtype}")
    _write_json(
        args.out,
        {
            "chosen": best,
            "seconds": args.seconds,
            "planned_steps": planned,
            "total_steps": steps,
            "learning_rate": rate,
            "warmup_steps": warmup,
            "digits": steps * batch,
            "overrides": overrides,
        },
    )
    print("\n".join(overrides))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    probe_parser = commands.add_parser("probe")
    probe_parser.add_argument("--config", required=True)
    probe_parser.add_argument("--out", required=True)
    probe_parser.add_argument("--batches", default="64,256,512,1024")
    probe_parser.add_argument("--dtypes", default="float32,bfloat16")
    probe_parser.add_argument("--steps", type=int, default=20)
    probe_parser.add_argument("--deadline_s", type=float, default=110)
    plan_parser = commands.add_parser("plan")
    plan_parser.add_argument("--probe", required=True)
    plan_parser.add_argument("--seconds", type=float, required=True)
    plan_parser.add_argument("--out", required=True)
    plan_parser.add_argument("--dtype", default="float32")
    plan_parser.add_argument("--steps", type=int, default=0)
    plan_parser.add_argument("--nll_split", default="test[:500]")
    args = parser.parse_args(argv)
    if args.command == "probe":
        probe(args)
    else:
        plan(args)


if __name__ == "__main__":
    main(sys.argv[1:])
