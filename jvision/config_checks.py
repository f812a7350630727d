"""Checking the values every run uses, before anything is written: `UserError` names the first
bad one and what is allowed."""

import importlib.util
import math
import os

import ml_collections

from jvision import config_lib, metrics
from jvision.data import catalog
from jvision.errors import UserError

MAX_SEED = 2**32 - 1
WANDB_MODES = ("online", "offline", "disabled", "shared", "dryrun", "run")  # W&B's own.


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the values every run uses, before anything is written; `UserError` names the first
    bad one and what is allowed."""

    def check(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise UserError(f"{key}={_lookup(config, key)!r}: {allowed}")

    def integer(key: str) -> bool:
        value = _lookup(config, key)
        return isinstance(value, int) and not isinstance(value, bool)

    check(integer("seed") and 0 <= config.seed <= MAX_SEED, "seed", f"use 0 to {MAX_SEED}")
    check(integer("total_steps") and config.total_steps >= 0, "total_steps", "use 0 or more")
    for key in ("batch_size", "eval_batch_size", "keep_checkpoints"):
        check(integer(key) and config[key] > 0, key, "use 1 or more")
    for key in ("log_every_steps", "eval_every_steps", "ckpt_every_steps"):
        check(integer(key) and config[key] > 0, key, "use 1 or more (steps between actions)")
    for key in ("num_summary_images", "profile_steps", "profile_first_step"):
        check(integer(key) and config[key] >= 0, key, "use 0 or more")
    for key in ("learning_rate", "clip_norm"):
        value = config.optimizer.get(key, 0.0)
        check(
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
            f"optimizer.{key}",
            "use a finite value of 0 or more",
        )
    optimizer = config.optimizer
    check(optimizer.name in config_lib.OPTIMIZERS, "optimizer.name", _one_of(config_lib.OPTIMIZERS))
    check(
        optimizer.get("schedule", "piecewise") in config_lib.SCHEDULES,
        "optimizer.schedule",
        _one_of(config_lib.SCHEDULES),
    )
    check(
        integer("optimizer.warmup_steps") and optimizer.warmup_steps >= 0,
        "optimizer.warmup_steps",
        "use 0 or more",
    )
    decay = config.ema.decay
    check(isinstance(decay, (int, float)) and 0 <= decay < 1, "ema.decay", "use 0 (off) to < 1")
    check(
        config.init_from.weights in config_lib.EMA_WEIGHTS,
        "init_from.weights",
        _one_of(config_lib.EMA_WEIGHTS),
    )
    check(
        config.ema.evaluate in config_lib.EMA_WEIGHTS,
        "ema.evaluate",
        _one_of(config_lib.EMA_WEIGHTS),
    )
    check(
        integer("grad_accum_steps") and config.grad_accum_steps >= 1,
        "grad_accum_steps",
        "use 1 or more",
    )
    check(
        config.grad_accum_loop in config_lib.ACCUMULATION_LOOPS,
        "grad_accum_loop",
        _one_of(config_lib.ACCUMULATION_LOOPS),
    )
    check(
        config.batch_size % config.grad_accum_steps == 0,
        "grad_accum_steps",
        f"use a divisor of batch_size {config.batch_size}",
    )
    writers = tuple(config.writers)
    check(
        all(writer in config_lib.WRITERS for writer in writers),
        "writers",
        f"use any of {', '.join(config_lib.WRITERS)}",
    )
    if "wandb" in writers and importlib.util.find_spec("wandb") is None:
        raise UserError(
            "writers includes 'wandb' but the wandb package is not installed: "
            "pip install 'jvision[wandb]' (or wandb), or leave it out of writers"
        )
    mode = os.environ.get("WANDB_MODE")
    if "wandb" in writers and mode and mode not in WANDB_MODES:
        raise UserError(f"WANDB_MODE={mode!r}: use one of {', '.join(WANDB_MODES)}")
    catalog.spec(config.data.name)  # Raises for an unknown dataset, naming the known ones.
    for name, eval_config in config.evals.items():
        metrics.check(name, eval_config)


def _one_of(allowed: tuple[str, ...]) -> str:
    return f"use one of {', '.join(allowed)}"


def _lookup(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node
