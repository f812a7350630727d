"""A config saved with a run (`config.json`, a checkpoint's `meta`): read back with the keys added
since filled in, and compared with the config of a run that resumes from it."""

import json

import ml_collections

from jvision import config_lib
from jvision.config_overrides import flatten


def as_json(tree):
    """A tree (a config dict) as JSON would give it back (tuples as lists, other values str)."""
    return json.loads(json.dumps(tree, default=str))


def from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A config saved with a run (`config.json`, a checkpoint's `meta`), with the keys added to
    `base_config` since then filled in with their defaults."""
    config = ml_collections.ConfigDict(saved)

    def fill(node: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
        for key, value in defaults.items():
            if key not in node:
                node[key] = value
            elif isinstance(value, ml_collections.ConfigDict) and isinstance(
                node[key], ml_collections.ConfigDict
            ):
                fill(node[key], value)

    model = config.get("model")
    if model is not None and "matmul_dtype" in model:  # Its name before `model.dtype`.
        model.dtype = model.matmul_dtype
        del model["matmul_dtype"]
    fill(config, config_lib.base_config())
    return config


def model_differences(saved: dict, current: dict) -> list[str]:
    """The `model.*` keys whose values differ between two model configs (as JSON)."""
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))


def settings_changes(saved: dict, current: dict) -> list[str]:
    """`key: old -> new` for every setting (outside `model`) that a resumed run changes."""
    old, new = (flatten({k: v for k, v in c.items() if k != "model"}) for c in (saved, current))
    return [
        f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k, "(absent)") != new.get(k, "(absent)")
    ]
