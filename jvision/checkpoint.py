"""Orbax checkpoints of everything a run needs to resume exactly.

Each checkpoint holds `state` (model and optimizer, as a pure dict of arrays), `data` (the Grain
iterator position) and `meta` (step and the resolved config). A checkpoint whose model config
differs from the current one is refused with a clear error instead of being half-loaded.
"""

import json
import logging
import os

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jvision.errors import UserError


def _as_json(tree):
    return json.loads(json.dumps(tree, default=str))


class Checkpoints:
    """A thin layer over `ocp.CheckpointManager` in `<workdir>/checkpoints`."""

    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=True
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: nnx.State, data: grain.DatasetIterator, config) -> None:
        meta = {"step": step, "config": _as_json(config.to_dict())}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(nnx.to_pure_dict(state)),
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
        current_model = _as_json(config.model.to_dict())
        if saved_model != current_model:
            changed = sorted(
                k
                for k in saved_model.keys() | current_model.keys()
                if saved_model.get(k) != current_model.get(k)
            )
            raise UserError(
                f"{where} was written for a different model (model.{', model.'.join(changed)} "
                f"differ); use a new --workdir or the config that wrote it"
            )
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(target),
                    data=grain.checkpoint.CheckpointRestore(data),
                ),
            )
        except Exception as error:
            raise UserError(
                f"{where} does not fit this model and optimizer ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:200]}); use a new --workdir"
            ) from error
        nnx.replace_by_pure_dict(state, restored["state"])
        logging.info("restored %s", where)
        return state, step

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def load_state(workdir: str, step: int | None = None) -> tuple[dict, dict]:
    """Reads a workdir's checkpoint without building a model (for notebooks and comparisons).

    Returns `(state, meta)`: the (model, optimizer) state as a pure dict of NumPy arrays, and the
    metadata (`step`, `config`). `step` defaults to the latest checkpoint.
    """
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(read_only=True)
    with ocp.CheckpointManager(directory, options=options) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise UserError(f"no checkpoint in {directory}")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    path = os.path.join(directory, str(step), "state")
    reader = ocp.PyTreeCheckpointer()
    as_numpy = jax.tree.map(
        lambda _: ocp.RestoreArgs(restore_type=np.ndarray), reader.metadata(path).item_metadata.tree
    )
    state = reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return state, meta
