"""A workdir opened for writing by one run: the door through which the trainer reaches every
guarantee a run gives (docs/guarantees.md).

    with RunDir(workdir, keep_checkpoints) as run:  # locked; nothing written yet
        intact = run.newest_intact()                # damaged checkpoints set aside on the way
        state = run.restore(intact.step, state, data)
        run.start(config)                           # checks passed: now it may write
        ...
        if run.stop_requested(step):
            run.stop(step, state, data, config)     # saves, then raises `stops.Stopped`
        run.save(step, state, data, config)
        ...
        run.finish(step, state, data, config, results, pictures)

- One writer: process 0 holds the workdir's `lock.Lock` (a lease in a bucket) from `__enter__`;
  a second run is refused with one line naming the first.
- A refused run writes nothing: until `start`, an error releases the lock and removes a workdir
  this run made (still empty).
- Stops: until `start`, SIGTERM and Ctrl-C end the process at once (nothing is being written,
  `stops.stop_while_starting`); from `start`, they are requests answered at a step boundary with
  a checkpoint (`stops.StopRequests`).
- Checkpoints are checksummed and committed whole (`checkpoints.Checkpoints`); results and
  pictures are written atomically, after the checkpoint they describe is committed.
- Closing, also on errors: the save in flight finished or dropped, the writers flushed, the lock
  released; an error while closing never hides the one that stopped the run
  (`failures.Closing`).
"""

import jax
from etils import epath

from jvision.errors import UserError
from jvision.safety import checkpoints, failures, files, lock, stops


class RunDir:
    """`workdir` opened for writing by this run (a context manager); see the module doc."""

    def __init__(self, workdir: epath.Path, keep_checkpoints: int):
        if workdir.exists() and not workdir.is_dir():
            raise UserError(f"--workdir {workdir} is a file, not a directory")
        self.workdir = workdir
        self.is_chief = jax.process_index() == 0  # Only process 0 writes files but checkpoints.
        self._keep = keep_checkpoints
        self._existed = workdir.exists()
        self._lock = lock.Lock(workdir)
        self._checkpoints: checkpoints.Checkpoints | None = None
        self._stops: stops.StopRequests | None = None
        self._closing = failures.Closing()
        self.saved_step: int | None = None  # The newest step saved by this run or restored.

    def __enter__(self) -> "RunDir":
        try:
            with _as_user_error(self.workdir):
                if self.is_chief:  # One lock per run: on process 0.
                    self._lock.acquire()
                self._checkpoints = checkpoints.Checkpoints(self.workdir, self._keep)
        except BaseException:
            self._abandon()
            raise
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if self._stops is None:  # Never started: leave the workdir as it was.
            self._abandon()
            return
        try:
            self._closing.__exit__(kind, error, traceback)
        finally:
            self._stops.__exit__(kind, error, traceback)

    def _abandon(self) -> None:
        if self._checkpoints is not None:  # Orbax's background threads end before the process.
            self._checkpoints.close()
        self._lock.release()
        workdir = self.workdir
        if not self._existed and workdir.exists() and not any(workdir.iterdir()):
            workdir.rmdir()

    # ----------------------------------------------------------------------- before start
    def newest_intact(self) -> checkpoints.Intact | None:
        """The newest checkpoint that verifies, and the config it was written with (None: no
        checkpoint); damaged ones are set aside on the way (`checkpoints.Checkpoints`)."""
        with _as_user_error(self.workdir):
            return self._checkpoints.newest_intact()

    def restore(self, step: int, state, data):
        """The training state of checkpoint `step` (returned) and the data position (into
        `data`)."""
        with _as_user_error(self.workdir):
            state = self._checkpoints.read(step, state, data)
        self.saved_step = step
        return state

    def start(self, config: dict) -> None:
        """The run passed its checks: it records itself as the lock's holder and writes
        `config.json`; from now on signals are requests (`stop_requested`) and closing is
        `failures.Closing`'s."""
        self._stops = stops.StopRequests().__enter__()
        self._closing.add(self._lock.release)
        self._closing.add(self._checkpoints.close)
        if self.is_chief:
            self._lock.announce()
            files.write_json(self.workdir / files.CONFIG_FILE, config)

    # ----------------------------------------------------------------------- while running
    def on_close(self, closer) -> None:
        """Calls `closer()` when the run closes, before what was added earlier."""
        self._closing.add(closer)

    @property
    def checkpoints_dir(self) -> epath.Path:
        return self._checkpoints.directory

    def latest_step(self) -> int | None:
        """The newest committed checkpoint's step."""
        return self._checkpoints.latest_step()

    def save(self, step: int, state, data, config: dict) -> None:
        """Saves the training state, the data position and the config as checkpoint `step`
        (committed in the background; one save in flight at a time)."""
        self._checkpoints.save(step, state, data, config)
        self.saved_step = step

    def stop_requested(self, step: int) -> bool:
        """Whether a signal asked the run to stop, at `step` (every process asks at every step,
        and all get the same answer)."""
        return self._stops.should_stop(step)

    def stop(self, step: int, state, data, config: dict) -> None:
        """Saves `step` (unless it is saved), waits for the commit, and raises
        `stops.Stopped`."""
        if self.saved_step != step:
            self.save(step, state, data, config)
        self._checkpoints.wait()
        raise stops.Stopped(step, self._stops.signal_name, str(self._checkpoints.directory))

    def finishing(self) -> None:
        """The training is done: a signal from now on lets the final evaluation, its checkpoint
        and the results finish, and the run end complete (exit status 0), rather than stop."""
        self._stops.finishing = True

    def finish(self, step: int, state, data, config: dict, results: dict, pictures: dict) -> None:
        """Saves the final `step` (unless it is saved), waits for the commit, then writes the
        pictures (`{name: [1, H, W, C] uint8}`) and `results.json`, which claims it."""
        if self.saved_step != step:
            self.save(step, state, data, config)
        self._checkpoints.wait()
        if self.is_chief:
            images = self.workdir / files.IMAGES_DIR
            images.mkdir(parents=True, exist_ok=True)
            for name, picture in pictures.items():
                files.save_png(images / f"{name}.png", picture[0])
            files.write_json(self.workdir / files.RESULTS_FILE, {"step": step, "metrics": results})


class _as_user_error:
    """An `OSError` reaching the workdir (it cannot be created or read) as one `UserError`."""

    def __init__(self, workdir: epath.Path):
        self.workdir = workdir

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, OSError) and failures.storage_failure(error) is None:
            raise UserError(f"--workdir {self.workdir}: {error.strerror or error}") from error
