"""Times a config's train step and its input pipeline, separately.

    python benchmarks/step_time.py --config=configs/vae_mnist.py [--steps=50] [--config.KEY=V]

Prints compile time, steady-state train step time (ms and examples/s, on a batch already on the
devices) and the Grain pipeline's own throughput (examples/s), as a table and one JSON line.
The pipeline should outpace the step: otherwise the accelerator waits for data.
"""

import json
import time

import jax
from absl import app, flags
from jvision_step import compile_step  # benchmarks/, this script's directory
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed train steps (after 3 warm-up steps).")
_BATCHES = flags.DEFINE_integer("pipeline_batches", 200, "Timed input batches.")


def main(argv):
    del argv
    config = _CONFIG.value
    step = compile_step(config)
    step.run(0, 3)  # Warm-up.
    start = time.perf_counter()
    step.run(3, _STEPS.value)
    step_s = (time.perf_counter() - start) / _STEPS.value
    data = step.data

    next(data)
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(data)
    batch_s = (time.perf_counter() - start) / _BATCHES.value

    result = {
        "model": config.model.name,
        "global_batch": config.batch_size,
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "compile_s": round(step.compile_s, 2),
        "step_ms": round(step_s * 1e3, 2),
        "train_examples_per_s": round(config.batch_size / step_s, 1),
        "pipeline_examples_per_s": round(config.batch_size / batch_s, 1),
        "data_workers": config.data.num_workers,
    }
    result["pipeline_outpaces_step"] = (
        result["pipeline_examples_per_s"] > result["train_examples_per_s"]
    )
    for key, value in result.items():
        print(f"{key:>26}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
