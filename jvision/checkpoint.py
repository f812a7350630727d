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

from jvision import config_lib
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


def settings_changes(saved: dict, current: dict) -> list[str]:
    """`key: old -> new` for every setting (outside `model`) that a resumed run changes."""
    old, new = (
        config_lib.flatten({k: v for k, v in c.items() if k != "model"}) for c in (saved, current)
    )
    return [
        f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k, "(absent)") != new.get(k, "(absent)")
    ]


CHECKSUMS_FILE = "jvision_checksums.json"
DAMAGED_DIR = "checkpoints_damaged"
# Orbax writes these when it commits a checkpoint, after the checksums are taken.
UNSEALED_FILES = (CHECKSUMS_FILE, "commit_success.txt", "_CHECKPOINT_METADATA")
TEMPORARY_SUFFIX = ".orbax-checkpoint-tmp"


def _files(step_dir: epath.Path) -> list[epath.Path]:
    """The files of a checkpoint that its checksums cover (epath has no recursive glob)."""
    files = []
    for folder, _, names in step_dir.walk():
        top = epath.Path(folder) == step_dir
        files += [
            epath.Path(folder) / name for name in names if not (top and name in UNSEALED_FILES)
        ]
    return sorted(files)


def _sha256(file: epath.Path) -> str:
    import hashlib

    return hashlib.sha256(file.read_bytes()).hexdigest()


def seal(step_dir: epath.Path) -> None:
    """Records the SHA-256 of every file of a committed checkpoint (tensorstore's array files
    carry no checksum of their own: a flipped byte would load silently)."""
    sums = {str(f.relative_to(step_dir)): _sha256(f) for f in _files(step_dir)}
    workdir_lib.write_json(step_dir / CHECKSUMS_FILE, {"sha256": sums})


def verify(step_dir: epath.Path) -> tuple[str, str]:
    """("intact", ""), ("unsealed", "") when no checksums were recorded (a save cut short right
    after its commit), or ("damaged", what is wrong)."""
    file = step_dir / CHECKSUMS_FILE
    if not file.exists():
        return "unsealed", ""
    try:
        expected = workdir_lib.read_json(file)["sha256"]
    except (ValueError, KeyError, OSError):
        return "damaged", f"{CHECKSUMS_FILE} is unreadable"
    for name, digest in sorted(expected.items()):
        path = step_dir / name
        if not path.exists():
            return "damaged", f"{name} is missing"
        if _sha256(path) != digest:
            return "damaged", f"{name} has changed"
    return "intact", ""


class Checkpoints:
    """A thin layer over `ocp.CheckpointManager` in `<workdir>/checkpoints`, with integrity.

    Every committed checkpoint is sealed with checksums of its files (`seal`, right after Orbax
    commits it, on process 0). `restore` verifies the newest checkpoint first; one that fails its
    check, or cannot be read without checksums to vouch for it, is moved aside to
    `<workdir>/checkpoints_damaged/` (never deleted) and the next older one is tried.
    """

    def __init__(self, workdir: epath.Path, keep: int):
        self.workdir = workdir
        self.directory = directory(workdir)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=False,  # Made by the first save: a refused run leaves no trace.
                enable_async_checkpointing=True,
                # A save cut short (kill -9, a second Ctrl-C) leaves a temporary directory,
                # never a step; it is removed when the workdir is next opened.
                cleanup_tmp_directories=True,
                async_options=ocp.AsyncOptions(post_finalization_callback=self._seal_committed),
            ),
        )

    def _seal_committed(self) -> None:
        """Orbax's post-finalisation hook: seals the checkpoint just finalised, still in its
        temporary directory (renamed to its step right after), and any unsealed older one."""
        if jax.process_index() != 0:
            return
        for step in self.manager.all_steps():
            for name in (f"{step}{TEMPORARY_SUFFIX}", str(step)):
                step_dir = self.directory / name
                if step_dir.exists() and not (step_dir / CHECKSUMS_FILE).exists():
                    seal(step_dir)

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

    def _set_aside(self, step: int, reason: str) -> None:
        """Moves a damaged checkpoint out of Orbax's sight, keeping it for inspection."""
        if jax.process_index() == 0:
            damaged = self.workdir / DAMAGED_DIR
            damaged.mkdir(parents=True, exist_ok=True)
            target, copy = damaged / str(step), 1
            while target.exists():
                target, copy = damaged / f"{step}.{copy}", copy + 1
            (self.directory / str(step)).rename(target)
            logging.warning("checkpoint step %d is damaged (%s): moved to %s", step, reason, target)
        self.manager.reload()

    def restore(
        self, state: nnx.State, data: grain.DatasetIterator, config: ml_collections.ConfigDict
    ) -> tuple[nnx.State, int] | None:
        """Restores the newest intact checkpoint into `state` (returned) and `data` (in place).

        Returns None when there is no checkpoint. Damaged checkpoints are set aside on the way;
        when none is left intact, or an intact one was written for another model, `UserError`.
        """
        skipped = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            where = f"checkpoint {self.directory}/{step}"
            status, reason = verify(self.directory / str(step))
            if status == "damaged":
                self._set_aside(step, reason)
                skipped.append(step)
                continue
            try:
                meta = self.manager.restore(
                    step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                )
                saved_model = meta["meta"]["config"]["model"]
            except Exception as error:
                self._set_aside(step, f"its metadata is unreadable: {type(error).__name__}")
                skipped.append(step)
                continue
            changed = model_config_differences(saved_model, _as_json(config.model.to_dict()))
            if changed:
                raise UserError(
                    f"{where} was written for a different model (model."
                    f"{', model.'.join(changed)} differ); use a new --workdir or the config that "
                    "wrote it"
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
                message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                if status == "intact":  # Its files are as written: the code changed, not it.
                    raise UserError(
                        f"{where} is intact (its checksums match) but does not fit this "
                        f"version's model and optimizer ({message}); use the version of jvision "
                        "that wrote it, or a new --workdir"
                    ) from error
                self._set_aside(step, f"unreadable: {message}")
                skipped.append(step)
                continue
            for name in ("model", "opt"):
                nnx.replace_by_pure_dict(state[name], restored[name])
            if skipped:
                logging.warning(
                    "resuming from step %d, the newest intact checkpoint; skipped damaged "
                    "step(s) %s (kept in %s)",
                    step,
                    ", ".join(map(str, skipped)),
                    self.workdir / DAMAGED_DIR,
                )
            logging.info("restored %s", where)
            changes = settings_changes(meta["meta"]["config"], _as_json(config.to_dict()))
            if changes:  # Allowed (more steps, another eval split), but never silent.
                logging.warning("resuming with settings changed since: %s", "; ".join(changes))
            return state, step
        if skipped:
            raise UserError(
                f"no intact checkpoint left in {self.directory}: step(s) "
                f"{', '.join(map(str, skipped))} are damaged (moved to "
                f"{self.workdir / DAMAGED_DIR}); use a new --workdir, or put back a good copy"
            )
        return None

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is complete and sealed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        # Orbax starts its removal of unfinished saves in a thread at construction and waits for
        # it only in `save`: a run refused before any save must still let it end, or the
        # interpreter's shutdown interrupts it with a traceback (orbax-checkpoint 0.12.8).
        await_cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()
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
        status, reason = verify(directory(workdir) / str(step))
        if status == "damaged":
            raise UserError(f"checkpoint {directory(workdir)}/{step} is damaged ({reason})")
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
