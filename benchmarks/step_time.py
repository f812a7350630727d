"""Times a config's train step and its input pipeline, separately.

    python benchmarks/step_time.py --config=configs/vae_mnist.py [--steps=50] [--config.KEY=V]

Prints compile time, steady-state train step time (ms and examples/s, on a batch already on the
devices) and the Grain pipeline's own throughput (examples/s), as a table and one JSON line.
The pipeline should outpace the step: otherwise the accelerator waits for data.
"""

import json
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from jvision import models, sharding, train
from jvision.data import pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_STEPS = flags.DEFINE_integer("steps", 50, "Timed train steps (after 3 warm-up steps).")
_BATCHES = flags.DEFINE_integer("pipeline_batches", 200, "Timed input batches.")


def main(argv):
    del argv
    config = _CONFIG.value
    family = models.get(config.model.name)
    mesh = sharding.make_mesh(config.mesh)
    data, _ = pipeline.train_data(config)
    batch = sharding.global_batch(mesh, next(data))
    layout, state = train.create_state(config, family, mesh)
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    step_fn, metrics_class = train.make_train_step(config, family, layout, mesh, spec)
    metrics = jax.device_put(metrics_class.empty(), sharding.replicated(mesh))

    start = time.perf_counter()
    compiled = step_fn.lower(state, metrics, batch, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start

    for step in range(3):
        state, metrics = compiled(state, metrics, batch, jnp.int32(step))
    jax.block_until_ready(state)
    start = time.perf_counter()
    for step in range(_STEPS.value):
        state, metrics = compiled(state, metrics, batch, jnp.int32(step))
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - start) / _STEPS.value

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
        "compile_s": round(compile_s, 2),
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
