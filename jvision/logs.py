"""What a command prints: jvision's own lines, and other libraries' only when they matter.

jvision's modules log to `logging.getLogger("jvision.<module>")`; a command shows those as
`jvision: ...` lines on stderr (stdout is kept for results, e.g. `jvision.evaluate`'s JSON):
the run's start (model, data, devices, workdir, resumed or new), progress with an ETA, each
evaluation, and one closing line. Other libraries (Orbax, CLU, Grain, TensorFlow, absl) show
their warnings and errors only, unless absl's `--verbosity` asks for more (`--verbosity=0`: their
INFO lines too; `-v 1`: jvision's debug lines as well). Their reports of a failing storage, which
the command sums up in one line of its own, are not shown. In a notebook nothing is configured:
jvision's records go wherever the notebook sends Python's logging.
"""

import contextlib
import logging
import sys
import threading
import time

from absl import logging as absl_logging

from jvision.safety.failures import storage_failure

NAME = "jvision"


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "jvision: " if record.levelno < logging.WARNING else "jvision: warning: "
        return prefix + record.getMessage()


class _NotStorageFailures(logging.Filter):
    """Drops other libraries' records of a failing storage (a full disk, a read-only mount):
    the command reports it once, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and storage_failure(error):
            return False
        return storage_failure(Exception(record.getMessage())) is None


def configure(verbosity: int | None = None) -> None:
    """Sets up a command's output (see the module doc); `verbosity` is absl's, None when the
    command line did not give one."""
    own = logging.getLogger(NAME)
    own.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    own.addHandler(handler)
    own.propagate = False
    own.setLevel(logging.DEBUG if (verbosity or 0) >= 1 else logging.INFO)

    absl_logging.set_verbosity(absl_logging.WARNING if verbosity is None else verbosity)
    quiet = _NotStorageFailures()
    for other in logging.getLogger().handlers:
        other.addFilter(quiet)
    previous_hook = threading.excepthook

    def thread_errors(arguments) -> None:  # Orbax's background threads, on a failing storage.
        if arguments.exc_value is None or not storage_failure(arguments.exc_value):
            previous_hook(arguments)

    threading.excepthook = thread_errors
    previous_unraisable = sys.unraisablehook

    def unraisable(arguments) -> None:  # Callbacks into an event loop Orbax already closed.
        if "Event loop is closed" not in str(arguments.exc_value):
            previous_unraisable(arguments)

    sys.unraisablehook = unraisable


@contextlib.contextmanager
def quiet_libraries():
    """Other libraries' absl messages (warnings included) off for a block in which jvision says
    itself what happens, unless `--verbosity` asked for their INFO lines. Yields whether they
    are off."""
    absl = logging.getLogger("absl")
    level = absl.level
    quiet = not absl.isEnabledFor(logging.INFO)
    if quiet:
        absl.setLevel(logging.ERROR)
    try:
        yield quiet
    finally:
        absl.setLevel(level)


def count(number: int, noun: str) -> str:
    """`1 process`, `8 CPU devices`, `16,000 examples`."""
    plural = noun if number == 1 else (noun + "es" if noun.endswith("s") else noun + "s")
    return f"{number:,} {plural}"


def duration(seconds: float) -> str:
    """A duration for people: `42 s`, `3 min 05 s`, `2 h 07 min`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Progress:
    """Training progress lines: `step 400/8000 (5%)  loss 117.2  9.8 steps/s  ETA 12 min 56 s`.
    The rate is measured over the steps since the previous line, evaluations and checkpoints
    included (what the ETA must count)."""

    def __init__(self, first_step: int, total_steps: int):
        self.total = total_steps
        self._step, self._time = first_step, time.monotonic()

    def line(self, step: int, loss: float) -> str:
        now = time.monotonic()
        rate = (step - self._step) / max(now - self._time, 1e-9)
        self._step, self._time = step, now
        eta = duration((self.total - step) / rate) if rate > 0 else "?"
        percent = 100 * step // max(self.total, 1)
        return (
            f"step {step}/{self.total} ({percent}%)  loss {loss:.5g}  {rate:.3g} steps/s  ETA {eta}"
        )


class BatchProgress:
    """Progress of a long evaluation: `name: 120/500 batches (24%), ETA 3 min 05 s`, every
    `every_secs` seconds once it has run that long (a short one says nothing). Called after
    each batch with a function that waits for it (evaluations are dispatched ahead of their
    results: the time is taken when one is done)."""

    def __init__(self, name: str, total: int, every_secs: float = 30.0):
        self.name, self.total, self.every_secs = name, total, every_secs
        self._start = self._last = time.monotonic()

    def __call__(self, done: int, wait) -> None:
        now = time.monotonic()
        if now - self._last < self.every_secs or done >= self.total:
            return
        wait()
        now = time.monotonic()
        eta = duration((now - self._start) / done * (self.total - done))
        percent = 100 * done // max(self.total, 1)
        logging.getLogger(__name__).info(
            "%s: %d/%d batches (%d%%), ETA %s", self.name, done, self.total, percent, eta
        )
        self._last = now


HEADLINES = ("mAP", "coco_AP", "nll_is_nats", "nelbo_nats", "top1", "loss")


def metrics(results: dict[str, float], limit: int = 4) -> str:
    """`test/nelbo_nats 100.97, test/nll_is_nats 98.12, ...`: headline metrics first (mAP, the
    likelihoods, accuracy, loss), at most `limit`, then how many more."""

    def rank(name: str) -> tuple:
        last = name.rsplit("/", 1)[-1]
        return (HEADLINES.index(last) if last in HEADLINES else len(HEADLINES), name)

    names = sorted(results, key=rank)
    shown = ", ".join(f"{name} {results[name]:.5g}" for name in names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
