"""Reading a workdir's model from its checkpoints, without the optimizer or the data: what
`jvision.evaluate` and `config.init_from` need. Never writes.

The workdir may be training while it is read: without a step, the newest checkpoint that reads
whole is taken, and when the trainer rotates it away (`keep_checkpoints`) before it is read, the
next newest; empty or unfinished step directories are passed over, as training passes over them.
A checkpoint whose checksums fail (or are missing) is named, never loaded.
"""

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jvision import checkpoint, checksums
from jvision import workdir as workdir_lib
from jvision.errors import UserError


def _steps(workdir: epath.Path) -> list[int]:
    """Committed steps, newest first (Orbax's temporary directories are not steps)."""
    folder = checkpoint.directory(workdir)
    if not folder.exists():
        raise UserError(f"{workdir} holds no checkpoints (no {workdir_lib.CHECKPOINTS_DIR}/)")
    steps = sorted((int(p.name) for p in folder.iterdir() if p.name.isdigit()), reverse=True)
    if not steps:
        raise UserError(f"{workdir} holds no checkpoints")
    return steps


def _meta(workdir: epath.Path, step: int) -> dict:
    """A step's verified `meta`; `FileNotFoundError` when it vanished or was never whole."""
    step_dir = checkpoint.directory(workdir) / str(step)
    problem = checksums.verify(step_dir)
    if problem:
        gone = not step_dir.exists() or not (step_dir / "meta").exists()
        # In a bucket, a save in flight is its step directory, not yet committed.
        if gone or checkpoint.is_unfinished(step_dir):
            raise FileNotFoundError(step_dir)
        raise UserError(f"checkpoint {step_dir} is damaged ({problem})")
    return workdir_lib.read_json(step_dir / "meta" / "metadata")


def _model(workdir: epath.Path, step: int, target: dict | None) -> dict:
    orbax_workdir = workdir_lib.without_glob_characters(workdir)
    path = checkpoint.directory(orbax_workdir) / str(step) / "model"
    reader = ocp.PyTreeCheckpointer()
    try:
        if target is None:
            as_numpy = jax.tree.map(
                lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                reader.metadata(path).item_metadata.tree,
            )
            args = ocp.args.PyTreeRestore(restore_args=as_numpy)
        else:
            target = checkpoint.target(target)
            args = ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)
            )
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


def read_meta(workdir: str | epath.Path, step: int | None = None) -> dict:
    """The `meta` (`step`, `config`) of a workdir's checkpoint `step` (default: the newest that
    reads whole). Raises `UserError` when there is none, or it is damaged."""
    workdir = workdir_lib.path(workdir)
    return _first_readable(workdir, step, lambda candidate: _meta(workdir, candidate))


def load_model(
    workdir: str | epath.Path, step: int | None = None, target=None
) -> tuple[dict, dict]:
    """Reads the model variables of a workdir's checkpoint.

    Args:
      workdir: the run's directory (local or `gs://`).
      step: which checkpoint; default: the newest that reads whole (see the module doc).
      target: a pure dict of arrays (or shape/dtype structs) to restore into, or a function of
        the checkpoint's `meta` returning one: the arrays are checked against it and placed
        with its shardings. Default: NumPy arrays as saved.
    Returns:
      `(model, meta)`: the variables as a pure dict, and the checkpoint's `meta` (`step`,
      `config`), both of the same step.
    Raises:
      UserError: no checkpoints, no such step, or a damaged checkpoint.
    """
    workdir = workdir_lib.path(workdir)

    def read(candidate: int):
        meta = _meta(workdir, candidate)
        tree = target(meta) if callable(target) else target
        try:
            return _model(workdir, candidate, tree), meta
        except Exception as error:  # Whatever Orbax raises when the files vanish under it.
            # Rotated away while being read (a rotation midway leaves the directory with some
            # of its files): the error is the checkpoint's only when it is still whole.
            step_dir = checkpoint.directory(workdir) / str(candidate)
            if step_dir.exists() and not checksums.verify(step_dir):
                raise
            raise FileNotFoundError(candidate) from error

    return _first_readable(workdir, step, read)
