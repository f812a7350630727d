"""`config.init_from`: part of another run's model copied into this one before training.

The sub-tree `init_from.source` ("/"-separated, "" for the whole model) of the model saved in
`init_from.workdir` (checkpoint `init_from.step`, default the newest) replaces the sub-tree
`init_from.target` (default: the same path) of this model: parameters and every other variable
under it (e.g. BatchNorm statistics); from a run with parameter EMA, its averaged parameters
unless `init_from.weights` is "live". Names, shapes and dtypes must match exactly; a mismatch is
one line naming the differing model config keys. The trainer applies it to a new run only.
"""

import logging

import jax
import ml_collections
import numpy as np
from flax import nnx

from jvision import config_saved
from jvision.errors import UserError
from jvision.safety import reader

log = logging.getLogger(__name__)


def _key(tree, name: str):
    """The key of `tree` spelled `name` (pure dicts of lists have int keys; read ones, str)."""
    for key in tree if isinstance(tree, dict) else ():
        if str(key) == name:
            return key
    raise KeyError(name)


def _subtree(tree: dict, path: str):
    for name in filter(None, path.split("/")):
        tree = tree[_key(tree, name)]
    return tree


def _path_string(key_path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in key_path)


def _flat(tree) -> dict[str, np.ndarray]:
    return {_path_string(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def apply(
    model_state: nnx.State, init: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict
) -> None:
    """Copies part of another run's model into `model_state` (in place), as `init` (the
    config's `init_from`) says; `UserError` when it does not fit."""
    target_path = init.target or init.source
    where = f"init_from.workdir {init.workdir}"
    try:
        saved, meta = reader.read_arrays(init.workdir, init.get("step"), init.weights)
    except UserError as error:
        raise UserError(f"{where}: {error}") from error
    current = nnx.to_pure_dict(model_state)
    try:
        source = _subtree(saved, init.source)
    except KeyError as error:
        raise UserError(
            f"init_from.source {init.source!r} is not in the model saved in {init.workdir} "
            f"(no {error}; its top level: {', '.join(sorted(map(str, saved)))})"
        ) from None
    try:
        destination = _subtree(current, target_path)
    except KeyError as error:
        raise UserError(
            f"init_from.target {target_path!r} is not in this model (no {error}; its top "
            f"level: {', '.join(sorted(map(str, current)))})"
        ) from None
    source_flat, destination_flat = _flat(source), _flat(destination)
    mismatch = sorted(source_flat.keys() ^ destination_flat.keys())
    mismatch += sorted(
        k
        for k in source_flat.keys() & destination_flat.keys()
        if np.shape(source_flat[k]) != np.shape(destination_flat[k])
    )
    if mismatch:
        saved_model, this_model = (
            meta["config"]["model"],
            config_saved.as_json(model_config.to_dict()),
        )
        shared = sorted(
            k
            for k in saved_model.keys() & this_model.keys() - {"name"}
            if saved_model[k] != this_model[k]
        )
        hint = f"; the model configs differ in model.{', model.'.join(shared)}" if shared else ""
        raise UserError(
            f"init_from: {init.source or 'the model'} saved in {init.workdir} does not fit "
            f"{target_path or 'this model'} here ({len(mismatch)} variables differ in name or "
            f"shape, e.g. {mismatch[0]}){hint}"
        )
    copied = jax.tree_util.tree_map_with_path(
        lambda p, old: jax.device_put(
            np.asarray(source_flat[_path_string(p)], old.dtype), old.sharding
        ),
        destination,
    )
    if target_path:
        parent_path, _, name = target_path.rpartition("/")
        parent = _subtree(current, parent_path)
        parent[_key(parent, name)] = copied
    else:
        current = copied
    nnx.replace_by_pure_dict(model_state, current)
    log.info("initialised %s from %s of %s", target_path or "the model", init.source, init.workdir)
