"""Orbax checkpoints of everything a run needs to resume exactly, and reading them back.

A checkpoint `<workdir>/checkpoints/<step>/` holds four items:

    model   the model's variables (parameters, BatchNorm statistics, …) as a pure dict of arrays
    opt     the optimizer's state
    data    the Grain iterator's position (one file per process)
    meta    {"step": N, "config": the resolved config}

Evaluation reads `model` and `meta` alone. A checkpoint whose model config differs from the
current one is refused with a clear error instead of being half-loaded.
"""

import logging

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from jvision import workdir as workdir_lib
from jvision.errors import UserError


def _as_json(tree):
    import json

    return json.loads(json.dumps(tree, default=str))


def _target(tree):
    """Shapes, dtypes and shardings to restore into (arrays land where `tree`'s are)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def directory(workdir: epath.Path) -> epath.Path:
    return workdir / workdir_lib.CHECKPOINTS_DIR


def model_config_differences(saved: dict, current: dict) -> list[str]:
    """The `model.*` keys whose values differ between two model configs (as JSON)."""
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))


class Checkpoints:
    """A thin layer over `ocp.CheckpointManager` in `<workdir>/checkpoints`."""

    def __init__(self, workdir: epath.Path, keep: int):
        self.directory = directory(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                enable_async_checkpointing=True,
                # A save cut short (kill -9, a second Ctrl-C) leaves a temporary directory,
                # never a step; it is removed when the workdir is next opened.
                cleanup_tmp_directories=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: nnx.State, data: grain.DatasetIterator, config) -> None:
        """Saves the training state `{"model", "opt"}`, the data position and the config."""
        meta = {"step": step, "config": _as_json(config.to_dict())}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(nnx.to_pure_dict(state["model"])),
                opt=ocp.args.StandardSave(nnx.to_pure_dict(state["opt"])),
                data=grain.checkpoint.CheckpointSave(data),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def restore(
        self, state: nnx.State, data: grain.DatasetIterator, config: ml_collections.ConfigDict
    ) -> tuple[nnx.State, int] | None:
        """Restores the latest checkpoint into `state` (returned) and `data` (in place).

        Returns None when there is no checkpoint.
        """
        step = self.latest_step()
        if step is None:
            return None
        where = f"checkpoint {self.directory}/{step}"
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            saved_model = meta["meta"]["config"]["model"]
        except Exception as error:
            raise UserError(
                f"{where} is unreadable ({type(error).__name__}); delete it or use a new --workdir"
            ) from error
        changed = model_config_differences(saved_model, _as_json(config.model.to_dict()))
        if changed:
            raise UserError(
                f"{where} was written for a different model (model.{', model.'.join(changed)} "
                f"differ); use a new --workdir or the config that wrote it"
            )
        pure = {name: nnx.to_pure_dict(state[name]) for name in ("model", "opt")}
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    model=ocp.args.StandardRestore(_target(pure["model"])),
                    opt=ocp.args.StandardRestore(_target(pure["opt"])),
                    data=grain.checkpoint.CheckpointRestore(data),
                ),
            )
        except Exception as error:
            raise UserError(
                f"{where} does not fit this model and optimizer ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}); use a new --workdir"
            ) from error
        for name in ("model", "opt"):
            nnx.replace_by_pure_dict(state[name], restored[name])
        logging.info("restored %s", where)
        return state, step

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is complete."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _read_only_manager(workdir: epath.Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        directory(workdir), options=ocp.CheckpointManagerOptions(read_only=True, create=False)
    )


def read_meta(workdir: str | epath.Path, step: int | None = None) -> dict:
    """The `meta` item (`step`, `config`) of a workdir's checkpoint `step` (default: the latest).

    Raises `UserError` when the workdir has no checkpoints or not that step.
    """
    workdir = workdir_lib.path(workdir)
    if not directory(workdir).exists():
        raise UserError(f"{workdir} holds no checkpoints (no {workdir_lib.CHECKPOINTS_DIR}/)")
    with _read_only_manager(workdir) as manager:
        steps = manager.all_steps()
        if not steps:
            raise UserError(f"{workdir} holds no checkpoints")
        step = max(steps) if step is None else step
        if step not in steps:
            raise UserError(
                f"{workdir} has no checkpoint at step {step}; its steps: "
                f"{', '.join(map(str, sorted(steps)))}"
            )
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def load_model(
    workdir: str | epath.Path, step: int | None = None, target: dict | None = None
) -> tuple[dict, dict]:
    """Reads the model variables of a workdir's checkpoint, without the optimizer or data.

    Args:
      workdir: the run's directory (local or `gs://`).
      step: which checkpoint (default: the latest).
      target: a pure dict of arrays (or shape/dtype structs) to restore into: the arrays are
        checked against it and placed with its shardings. Default: NumPy arrays as saved.
    Returns:
      `(model, meta)`: the variables as a pure dict, and the checkpoint's `meta`.
    """
    workdir = workdir_lib.path(workdir)
    meta = read_meta(workdir, step)
    path = directory(workdir) / str(meta["step"]) / "model"
    reader = ocp.PyTreeCheckpointer()
    if target is None:
        as_numpy = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
            reader.metadata(path).item_metadata.tree,
        )
        args = ocp.args.PyTreeRestore(restore_args=as_numpy)
    else:
        target = _target(target)
        args = ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
        )
    return reader.restore(path, args=args), meta


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


def initialise_from(
    model_state: nnx.State, init: ml_collections.ConfigDict, model_config: ml_collections.ConfigDict
) -> None:
    """Copies part of another run's model into `model_state` (in place): `config.init_from`.

    The sub-tree `init.source` ("/"-separated, "" for the whole model) of the model saved in
    `init.workdir` (checkpoint `init.step`, default the latest) replaces the sub-tree
    `init.target` (default: the same path) of this model: parameters and every other variable
    under it (e.g. BatchNorm statistics). Names, shapes and dtypes must match exactly.
    """
    target_path = init.target or init.source
    where = f"init_from.workdir {init.workdir}"
    try:
        saved, meta = load_model(init.workdir, init.get("step"))
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
        saved_model, this_model = meta["config"]["model"], _as_json(model_config.to_dict())
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
    logging.info(
        "initialised %s from %s of %s", target_path or "the model", init.source, init.workdir
    )
