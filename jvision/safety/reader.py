"""Reading a workdir's model from its checkpoints, without the optimizer or the data: what
`jvision.evaluate`, `config.init_from` and `jvision.export` need. Never writes. A model zoo
entry (`zoo:<name>`, `jvision.zoo`) is read wherever a workdir is.

The workdir may be training while it is read: without a step, the newest checkpoint that reads
whole is taken, and when the trainer rotates it away (`keep_checkpoints`) before it is read, the
next newest; empty or unfinished step directories are passed over, as training passes over them.
A checkpoint whose checksums fail (or are missing) is named, never loaded.
"""

from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from jvision import logs, zoo
from jvision.errors import UserError
from jvision.safety import checkpoints, checksums, files


def _steps(workdir: epath.Path) -> list[int]:
    """Committed steps, newest first (Orbax's temporary directories are not steps)."""
    folder = checkpoints.directory(workdir)
    if not folder.exists():
        raise UserError(f"{workdir} holds no checkpoints (no {files.CHECKPOINTS_DIR}/)")
    steps = sorted((int(p.name) for p in folder.iterdir() if p.name.isdigit()), reverse=True)
    if not steps:
        raise UserError(f"{workdir} holds no checkpoints")
    return steps


def _meta(workdir: epath.Path, step: int) -> dict:
    """A step's verified `meta`; `FileNotFoundError` when it vanished or was never whole."""
    step_dir = checkpoints.directory(workdir) / str(step)
    problem = checksums.verify(step_dir)
    if problem:
        gone = not step_dir.exists() or not (step_dir / "meta").exists()
        # In a bucket, a save in flight is its step directory, not yet committed.
        if gone or checkpoints.is_unfinished(step_dir):
            raise FileNotFoundError(step_dir)
        raise UserError(f"checkpoint {step_dir} is damaged ({problem})")
    return files.read_json(step_dir / "meta" / "metadata")


WEIGHTS = ("averaged", "live")


def _item(workdir: epath.Path, step: int, target: dict | None, item: str) -> dict:
    """One item of a step (`model`, `ema`) read into `target` (None: NumPy arrays as saved)."""
    orbax_workdir = files.without_glob_characters(workdir)
    path = checkpoints.directory(orbax_workdir) / str(step) / item
    reader = ocp.PyTreeCheckpointer()
    # An item of a composite checkpoint has no metadata file of its own: Orbax warns of that at
    # every read, which says nothing wrong.
    try:
        with logs.quiet_libraries():
            if target is None:
                as_numpy = jax.tree.map(
                    lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                    reader.metadata(path).item_metadata.tree,
                )
                args = ocp.args.PyTreeRestore(restore_args=as_numpy)
            else:
                target = checkpoints.target(target)
                restore_args = ocp.checkpoint_utils.construct_restore_args(target)
                args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args)
            return reader.restore(path, args=args)
    finally:
        reader.close()  # Its handler and metadata store, as Orbax's `Checkpointer.close` says.


def _first_readable(workdir: epath.Path, step: int | None, read, attempts: int = 5):
    """`read(step)` of the given step, or of the newest step that reads whole: the steps are
    listed again when every listed one vanished while read (a run saving at every step)."""
    steps = _steps(workdir)
    if step is not None:
        if step not in steps:
            raise UserError(
                f"{workdir} has no checkpoint at step {step}; its steps: "
                f"{', '.join(map(str, sorted(steps)))}"
            )
        try:
            return read(step)
        except FileNotFoundError:
            raise UserError(
                f"{workdir}: checkpoint step {step} was removed (or never finished) while being "
                "read; leave out the step to take the newest"
            ) from None
    for _ in range(attempts):
        for candidate in steps:
            try:
                return read(candidate)
            except FileNotFoundError:  # Rotated away meanwhile, or an unfinished save.
                continue
        steps = _steps(workdir)
    raise UserError(f"{workdir} holds no complete checkpoint (its steps vanished while read)")


def _zoo_entry(workdir, step: int | None) -> tuple[dict, dict] | None:
    """`zoo.read` of the entry `workdir` names, or None when it names none."""
    entry = zoo.resolve(workdir)
    if entry is None:
        return None
    variables, meta = zoo.read(entry)
    if step is not None and step != meta["step"]:
        raise UserError(f"zoo entry {entry} holds step {meta['step']} only, not {step}")
    return variables, meta


def read_meta(workdir: str | epath.Path, step: int | None = None) -> dict:
    """The `meta` (`step`, `config`) of a workdir's checkpoint `step` (default: the newest that
    reads whole). Raises `UserError` when there is none, or it is damaged."""
    found = _zoo_entry(workdir, step)
    if found is not None:
        return found[1]
    workdir = files.path(workdir)
    return _first_readable(workdir, step, lambda candidate: _meta(workdir, candidate))


def _overlay(variables: dict, replacements: dict) -> dict:
    """`variables` (a nested dict) with the values of `replacements` (a sub-tree) put in."""
    merged = dict(variables)
    for key, value in replacements.items():
        merged[key] = _overlay(variables[key], value) if isinstance(value, dict) else value
    return merged


def _read(workdir: epath.Path, step: int | None, target_of, weights: str):
    """`(variables, meta, built)` of one step (which: see the module doc), where
    `(target, parameters, built) = target_of(meta)`: the model's variables are read into
    `target`, and when the step has averaged parameters (parameter EMA) and `weights` is
    "averaged", those are read into `parameters` and replace the trained ones (None targets:
    NumPy arrays as saved)."""
    if weights not in WEIGHTS:
        raise UserError(f"weights={weights!r}; use one of {', '.join(WEIGHTS)}")

    def read(candidate: int):
        meta = _meta(workdir, candidate)
        target, parameters, built = target_of(meta)
        averaged = checkpoints.directory(workdir) / str(candidate) / "ema"
        try:
            variables = _item(workdir, candidate, target, "model")
            if weights == "averaged" and averaged.exists():
                variables = _overlay(variables, _item(workdir, candidate, parameters, "ema"))
            return variables, meta, built
        except Exception as error:  # Whatever Orbax raises when the files vanish under it.
            # Rotated away while being read (a rotation midway leaves the directory with some
            # of its files): the error is the checkpoint's only when it is still whole.
            step_dir = checkpoints.directory(workdir) / str(candidate)
            if step_dir.exists() and not checksums.verify(step_dir):
                raise
            raise FileNotFoundError(candidate) from error

    return _first_readable(workdir, step, read)


def read_arrays(
    workdir: str | epath.Path, step: int | None = None, weights: str = "averaged"
) -> tuple[dict, dict]:
    """The model variables of a workdir's checkpoint `step` (default: the newest that reads
    whole, see the module doc) as saved: `(a pure dict of NumPy arrays, the checkpoint's meta)`,
    both of the same step; with parameter EMA, the averaged parameters unless `weights` is
    "live". `UserError` when there is no checkpoint, no such step, or it is damaged."""
    found = _zoo_entry(workdir, step)
    if found is not None:
        return found
    variables, meta, _ = _read(files.path(workdir), step, lambda meta: (None, None, None), weights)
    return variables, meta


def read_model(
    workdir: str | epath.Path,
    model_of: Callable[[dict], nnx.Module],
    step: int | None = None,
    weights: str = "averaged",
) -> tuple[nnx.Module, dict]:
    """The model of a workdir's checkpoint `step` (default: the newest that reads whole):
    `model_of(meta)` builds it for the checkpoint's `meta` (its arrays may be abstract, e.g.
    from `nnx.eval_shape`, with shardings saying where they go), and its variables are read
    into it; with parameter EMA, the averaged parameters unless `weights` is "live". Returns
    `(the model, meta)`, both of the same step. `UserError` when there is no checkpoint, no
    such step, it is damaged, or its arrays do not fit the model."""

    def target_of(meta: dict):
        graphdef, state = nnx.split(model_of(meta))
        parameters = nnx.to_pure_dict(nnx.filter_state(state, nnx.Param))
        return nnx.to_pure_dict(state), parameters, (graphdef, state)

    found = _zoo_entry(workdir, step)
    if found is not None:
        saved, meta = found
        target, _, (graphdef, state) = target_of(meta)
        variables = _placed(saved, target, zoo.resolve(workdir))
    else:
        workdir = files.path(workdir)
        variables, meta, (graphdef, state) = _read(workdir, step, target_of, weights)
    nnx.replace_by_pure_dict(state, variables)
    return nnx.merge(graphdef, state), meta


def _placed(saved: dict, target: dict, where) -> dict:
    """`saved`'s arrays (a nested dict of NumPy arrays, as `zoo.read` gives them) in the
    structure of `target` (abstract arrays: their dtype and sharding); `UserError` when the two
    hold other variables or shapes."""
    flat = zoo.flatten(saved)
    wanted = {_path_string(path) for path, _ in jax.tree_util.tree_flatten_with_path(target)[0]}
    differing = sorted(wanted ^ set(flat))
    if differing:
        raise UserError(f"{where} does not fit its config's model (e.g. {differing[0]})")

    def place(path, leaf):
        value = flat[_path_string(path)]
        if tuple(value.shape) != tuple(leaf.shape):
            raise UserError(f"{where}: {_path_string(path)} has shape {value.shape}")
        return jax.device_put(np.asarray(value, leaf.dtype), getattr(leaf, "sharding", None))

    return jax.tree_util.tree_map_with_path(place, target)


def _path_string(path) -> str:
    """ "encoder/0/conv/kernel" for a pure dict's key path (string or integer keys)."""
    return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)
