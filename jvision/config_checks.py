"""Checking the values every run uses, before anything is written: `UserError` names the first
bad one and what is allowed."""

import math

import ml_collections

from jvision import metrics
from jvision.data import catalog
from jvision.errors import UserError

MAX_SEED = 2**32 - 1


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
    catalog.spec(config.data.name)  # Raises for an unknown dataset, naming the known ones.
    for name, eval_config in config.evals.items():
        metrics.check(name, eval_config)


def _lookup(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node
