"""`--config.KEY=VALUE`: dotted keys set in a config, each value parsed as the type of the value it
replaces; an unknown key gets the closest known ones suggested."""

import ast
import difflib

import ml_collections

from jvision.errors import UserError


def suggestions(key: str, config: ml_collections.ConfigDict) -> str:
    """ "; did you mean A or B?" for the keys of `config` closest to an unknown `key`, else ""."""
    keys = list(flatten(config.to_dict()))
    keys += sorted({k.rsplit(".", 1)[0] for k in keys if "." in k})  # Sections too.
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:  # The last part alone (`--config.total_step`, `--config.model.latnt_dim`).
        name = key.rsplit(".", 1)[-1]
        close = [k for k in keys if difflib.get_close_matches(name, [k.rsplit(".", 1)[-1]], 1, 0.8)]
    return f"; did you mean {' or '.join(close[:3])}?" if close else ""


def _parse(text: str, current):
    """A command-line string as the type of the value it replaces."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a boolean")
        return text.lower() in ("true", "1")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    try:  # Tuples, lists, numbers, None.
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Sets dotted keys (`{"data.name": "mnist", "eval_batch_size": "100"}`) in place; strings
    are parsed as the type of the value they replace. Unknown keys and bad values raise
    `UserError`."""
    for key, value in overrides.items():
        *parents, name = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise UserError(f"unknown config key {key!r}{suggestions(key, config)}")
        try:
            node[name] = _parse(value, node[name]) if isinstance(value, str) else value
        except (TypeError, ValueError) as error:
            raise UserError(f"bad value {value!r} for config key {key!r}: {error}") from None


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as `{"optimizer.learning_rate": value, ...}`."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
