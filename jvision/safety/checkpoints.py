"""Orbax checkpoints of everything a run needs to resume exactly: saving, and finding the newest
intact one.

A checkpoint `<workdir>/checkpoints/<step>/` holds four items:

    model   the model's variables (parameters, BatchNorm statistics, …) as a pure dict of arrays
    opt     the optimizer's state
    data    the Grain iterator's position (one file per process)
    meta    {"step": N, "config": the resolved config}

and `jvision_checksums.json` (`jvision.safety.checksums`), written before Orbax commits it.
`newest_intact` verifies the newest checkpoint first; one that fails (or has no checksums) is moved
aside to `<workdir>/checkpoints_damaged/` (never deleted) and the next older one is tried. Whether
an intact checkpoint suits the run (the same model) is the trainer's decision. Reading a
checkpoint without the optimizer or the data (evaluation, `init_from`) is
`jvision.safety.reader`.
"""

import dataclasses
import functools
import logging

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from jvision import logs
from jvision.errors import UserError
from jvision.safety import checksums, files

log = logging.getLogger(__name__)

DAMAGED_DIR = "checkpoints_damaged"
# Written into DAMAGED_DIR where folders exist only through their files (gcsfs buckets).
DAMAGED_README = "README.txt"
DAMAGED_NOTE = b"Checkpoints jvision found damaged and moved here; it never deletes them.\n"
TEMPORARY_MARK = ".orbax-checkpoint-tmp"  # In the name of a save Orbax has not committed.
COMMIT_FILE = "commit_success.txt"  # Orbax writes it last into a save it commits in a bucket.


def directory(workdir: epath.Path) -> epath.Path:
    return workdir / files.CHECKPOINTS_DIR


def target(tree):
    """Shapes, dtypes and shardings to restore into (arrays land where `tree`'s are)."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def is_unfinished(entry: epath.Path) -> bool:
    """Whether an entry of the checkpoints folder is a save Orbax did not commit: on disks, its
    temporary directory (renamed at the commit); in a bucket, where Orbax renames nothing and
    commits by writing `COMMIT_FILE` last, a step directory without that file."""
    if TEMPORARY_MARK in entry.name:
        return True
    in_bucket_step = files.is_uri(entry) and entry.name.isdigit()
    return in_bucket_step and not (entry / COMMIT_FILE).exists()


def remove_unfinished_saves(checkpoints: epath.Path, sync: bool = True) -> None:
    """Removes what saves cut short left (kill -9, a second Ctrl-C, a full disk): Orbax's
    temporary directories (`is_unfinished`), never a committed step. Process 0 removes; with
    `sync`, every process then waits for it."""
    if jax.process_index() == 0 and checkpoints.exists():
        for entry in checkpoints.iterdir():
            if is_unfinished(entry):
                entry.rmtree()
    if sync and jax.process_count() > 1:
        multihost_utils.sync_global_devices("jvision_remove_unfinished_saves")


@functools.cache
def write_each_array_whole_in_one_process() -> None:
    """Orbax's replica-parallel saving (its default off GPUs) writes an array replicated over
    N devices as N slices, one per replica. Across hosts that shares the writing out; in one
    process it only adds N eager slices per array to every save (on 8 CPU devices, 2.0 of the
    2.9 s a tiny SSD run spent saving, measured with py-spy). One process writes each array
    whole. Orbax has no public switch for its default `jax.Array` handler: this registers a new
    one with Orbax's public constructor and carries over the registered one's metadata store
    (`tests/test_checkpoint.py` fails if that attribute moves)."""
    if jax.process_count() > 1:
        return
    registered = ocp.type_handlers.get_type_handler(jax.Array)
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False,
        array_metadata_store=getattr(registered, "_array_metadata_store", None),
    )
    with logs.quiet_libraries():  # Orbax warns of every override.
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def wait_for_every_write(manager: ocp.CheckpointManager) -> None:
    """Blocks until every write of the newest save has ended, also after one of them failed.
    Orbax's wait returns at the first failed write (it waits on the writes one by one and stops
    at the first error) while the others still write into the save's temporary directory:
    removing that directory then races them, and what they write after it stays behind (a test
    run under load once found `4.orbax-checkpoint-tmp` after a full disk). Orbax has no public
    way to wait for them all: this reads its async checkpointer's futures, here and nowhere else
    (`tests/test_checkpoint.py` fails if they move)."""
    for write in manager._checkpointer._async_manager._commit_futures or ():
        try:
            write.result()
        except Exception:  # Orbax's wait raised the first error; a second adds nothing.
            pass


class _Manager(ocp.CheckpointManager):
    """Orbax's manager without its own preemption checks. Orbax asks JAX whether the preemption
    sync point is reached from `save` and again from its finalize thread, with the step being
    saved. JAX's protocol takes each call's step as the process's position (at a notice it
    publishes the last one, and every process stops at the largest published step + 1, on an
    exact match): a late call from that thread with an older step can make one process publish
    a step it has passed, miss the agreed stop and train on while the others wait for it at the
    save's barrier; the run hangs. Only the training loop asks, from the main thread, once per
    step (`stops.StopRequests`)."""

    def reached_preemption(self, step: int) -> bool:
        del step
        return False


@dataclasses.dataclass(frozen=True)
class Intact:
    """A checkpoint that verified: its step, the config it was written with (as saved), and the
    newer steps found damaged and set aside on the way."""

    step: int
    config: dict
    skipped: tuple[int, ...] = ()


class Checkpoints:
    """A thin layer over `ocp.CheckpointManager` in `<workdir>/checkpoints`, with integrity."""

    def __init__(self, workdir: epath.Path, keep: int):
        self.workdir = workdir
        self.directory = directory(workdir)
        self._pending_step: int | None = None  # The step being saved, until it is sealed.
        remove_unfinished_saves(self.directory)
        write_each_array_whole_in_one_process()
        self.manager = _Manager(
            directory(files.without_glob_characters(workdir)),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=False,  # Made by the first save: a refused run leaves no trace.
                enable_async_checkpointing=True,
                cleanup_tmp_directories=False,  # Done above, before anything else runs.
                async_options=ocp.AsyncOptions(post_finalization_callback=self._seal),
            ),
        )

    def _seal(self) -> None:
        """Orbax's post-finalisation hook, run before it commits: seals the save in flight, in
        its temporary directory (on a bucket, where saves are not renamed: in its step
        directory, before the commit marker). Only that one: an older step without checksums
        is damaged, and sealing it would vouch for whatever it holds now."""
        step, self._pending_step = self._pending_step, None
        if jax.process_index() != 0 or step is None:
            return
        for entry in self.directory.iterdir():
            if entry.name == str(step) or entry.name.startswith(f"{step}{TEMPORARY_MARK}"):
                checksums.seal(entry)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: dict, data: grain.DatasetIterator, config: dict) -> None:
        """Saves the training state (`{"model", "opt"}`, and `"ema"` when there is one: an item
        each), the data position and the config (a dict that JSON can hold)."""
        self.manager.wait_until_finished()  # One save in flight at a time: its step is known.
        self._pending_step = step
        meta = {"step": step, "config": config}
        parts = {
            name: ocp.args.StandardSave(nnx.to_pure_dict(part)) for name, part in state.items()
        }
        self.manager.save(
            step,
            args=ocp.args.Composite(
                **parts,
                data=grain.checkpoint.CheckpointSave(data),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def _set_aside(self, step: int, reason: str) -> None:
        """Moves a damaged checkpoint out of Orbax's sight, keeping it for inspection."""
        if jax.process_index() == 0:
            damaged = self.workdir / DAMAGED_DIR
            damaged.mkdir(parents=True, exist_ok=True)
            if not damaged.exists():  # A bucket through gcsfs: a folder exists by its files.
                files.write_atomically(damaged / DAMAGED_README, DAMAGED_NOTE)
            destination, copy = damaged / str(step), 1
            while destination.exists():
                destination, copy = damaged / f"{step}.{copy}", copy + 1
            (self.directory / str(step)).rename(destination)
            log.warning(
                "checkpoint step %d is damaged (%s): moved to %s", step, reason, destination
            )
        self.manager.reload()

    def _saved_config(self, step: int) -> dict:
        """The config a checkpoint was written with (raises when unreadable)."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return meta["meta"]["config"]

    def _read(self, step: int, state: nnx.State, data: grain.DatasetIterator):
        pure = {name: nnx.to_pure_dict(state[name]) for name in ("model", "opt")}
        return self.manager.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(target(pure["model"])),
                opt=ocp.args.StandardRestore(target(pure["opt"])),
                data=grain.checkpoint.CheckpointRestore(data),
            ),
        )

    def newest_intact(self) -> "Intact | None":
        """The newest checkpoint whose files match their checksums and whose metadata reads, and
        the config it was written with; None when there is no checkpoint. Damaged ones on the
        way are set aside (kept in `DAMAGED_DIR`); when none is left intact, `UserError`."""
        skipped = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = checksums.verify(self.directory / str(step))
            try:
                saved = self._saved_config(step) if not problem else None
            except Exception as error:  # Intact files, unreadable metadata: damaged all the same.
                problem = f"its metadata is unreadable: {type(error).__name__}"
            if problem:
                self._set_aside(step, problem)
                skipped.append(step)
                continue
            return Intact(step, saved, tuple(skipped))
        if skipped:
            raise UserError(
                f"no intact checkpoint left in {self.directory}: step(s) "
                f"{', '.join(map(str, skipped))} are damaged (moved to "
                f"{self.workdir / DAMAGED_DIR}); use a new --workdir, or put back a good copy"
            )
        return None

    def read(self, step: int, state: dict, data: grain.DatasetIterator) -> dict:
        """Reads an intact checkpoint into the training state, each of its parts (returned), and
        the data iterator (in place); `UserError` when its arrays do not fit the state."""
        parts = {
            name: ocp.args.StandardRestore(target(nnx.to_pure_dict(part)))
            for name, part in state.items()
        }
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(**parts, data=grain.checkpoint.CheckpointRestore(data)),
            )
        except Exception as error:  # Its files are as written: the code changed, not it.
            message = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            raise UserError(
                f"checkpoint {self.directory}/{step} is intact (its checksums match) but does not "
                f"fit this version's model and optimizer ({message}); use the version of jvision "
                "that wrote it, or a new --workdir"
            ) from error
        for name, part in state.items():
            nnx.replace_by_pure_dict(part, restored[name])
        return state

    def wait(self) -> None:
        """Blocks until the save in flight (if any) is committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for the save in flight, then stops Orbax; what a failed save left is removed
        (the error, e.g. a full disk, is raised)."""
        try:
            self.manager.wait_until_finished()
        finally:
            try:
                self.manager.close()
            finally:
                wait_for_every_write(self.manager)
                remove_unfinished_saves(self.directory, sync=False)
