"""Stopping a run early without losing work: SIGTERM (preemption) and SIGINT (Ctrl-C).

Cloud TPU maintenance, GKE and Slurm (`--signal=TERM@120`) announce a stop with SIGTERM. On the
first SIGTERM or SIGINT the trainer finishes what it is doing (a step, a save, an evaluation),
saves a checkpoint at the current step and raises `Stopped`; `jvision.main` prints one line and
exits with `EXIT_STATUS` (75, sysexits' EX_TEMPFAIL: "try again"), which tells a supervisor to
requeue. Rerunning the command resumes exactly. A second Ctrl-C exits at once (status 130); the
workdir then resumes from its last complete checkpoint.

With several processes (`jax.distributed`) they must stop at the same step. JAX's preemption
service (on by default) catches SIGTERM, tells every process, and makes
`multihost_utils.reached_preemption_sync_point(step)` true on all of them at the same step; a
SIGINT is forwarded to it as a SIGTERM. That holds only if each process asks from one place, once
per step: the training loop does, and Orbax's own checks are off (`checkpoint._Manager`). With
one process a signal flag does the same.

Before the loop (imports, data preparation, the model's compilation, the restore) and after it,
nothing of the run is being written, so a signal there ends the process at once: the first thing
every command does is `stop_while_starting()`, after which SIGTERM and SIGINT print one line and
exit with status 75 (the workdir is as its last checkpoint left it; a dataset half-prepared is a
temporary directory TFDS does not use). Exiting, rather than raising an exception, is deliberate:
an exception raised inside an import or a C extension's initialisation turns into another error.
This module imports nothing heavy, so commands can install that before their own imports.
"""

import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

EXIT_STATUS = 75
INTERRUPTED_STATUS = 130


def _exit_stopped(number: int, frame) -> None:
    del frame
    name = signal.Signals(number).name
    print(
        f"jvision: stopped by {name} outside the training loop (starting up, or between runs); "
        "nothing was lost: rerun the same command to start or resume",
        file=sys.stderr,
        flush=True,
    )
    os._exit(EXIT_STATUS)


def stop_while_starting() -> None:
    """From now until the training loop takes over (and again after it), SIGTERM and SIGINT
    end the process with one line and exit status 75 (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, _exit_stopped)


class Stopped(Exception):
    """The run stopped early at `step` after saving a checkpoint there (`signal_name`)."""

    def __init__(self, step: int, signal_name: str, directory: str):
        self.step = step
        self.signal_name = signal_name
        super().__init__(
            f"stopped by {signal_name} at step {step}; saved a checkpoint in {directory}, rerun "
            "the same command to resume"
        )


def _distributed() -> bool:
    import jax  # Here, not above: this module is imported before JAX (see the module doc).

    return jax.distributed.is_initialized()


class StopRequests:
    """Turns SIGTERM/SIGINT into a request checked once per step (a context manager)."""

    def __init__(self):
        self.signal_name: str | None = None
        # Set once the training is done: a stop then lets the final evaluation, its checkpoint
        # and the results finish (the run ends complete, exit status 0).
        self.finishing = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is not threading.main_thread():
            return self  # Handlers can only be set there; a library caller keeps its own.
        # Under jax.distributed, SIGTERM belongs to JAX's preemption service.
        signals = (signal.SIGINT,) if _distributed() else (signal.SIGINT, signal.SIGTERM)
        for number in signals:
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame) -> None:
        del frame
        name = signal.Signals(number).name
        if self.signal_name is not None and number == signal.SIGINT:
            message = "jvision: interrupted; the workdir resumes from its last checkpoint"
            print(message, file=sys.stderr)
            os._exit(INTERRUPTED_STATUS)
        self.signal_name = self.signal_name or name
        if self.finishing:
            log.warning(
                "%s: the training is done; finishing its final evaluation and results (the run "
                "then ends complete; Ctrl-C again exits at once)",
                name,
            )
        else:
            log.warning("%s: stopping after the current step, with a checkpoint", name)
        if _distributed() and number == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # Let JAX's service agree on the step.

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop now, after `step` steps. Under jax.distributed every process
        must call this at every step (the same steps), and all get the same answer."""
        if _distributed():
            from jax.experimental import multihost_utils  # See `_distributed`.

            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = self.signal_name or "SIGTERM"
                return True
            return False
        return self.signal_name is not None


def starting_command(package: str = "jvision") -> bool:
    """Whether this process is `python -m <package>.…` still finding its command: `python -m`
    keeps `sys.argv[0]` at "-m" while it imports the command's packages, before it runs the
    command's module (`sys.orig_argv` holds the command line as given)."""
    if sys.argv[:1] != ["-m"]:
        return False
    arguments = iter(getattr(sys, "orig_argv", [])[1:])
    for argument in arguments:
        if argument == "-m":
            module = next(arguments, "")
        elif argument.startswith("-m"):
            module = argument[2:]
        else:
            continue
        return module == package or module.startswith(f"{package}.")
    return False
