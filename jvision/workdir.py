"""A run's directory, local or in a bucket: its layout and every file jvision writes there.

All workdir I/O goes through `etils.epath`, so `gs://bucket/run` works wherever a local path does
(Orbax, TensorBoard's writers and TFDS take the same paths). Layout:

    checkpoints/<step>/   Orbax checkpoints (`jvision.checkpoint`)
    config.json           the resolved config of the last run started here
    results.json          the final evaluation: {"step": N, "metrics": {...}}
    images/<name>.png     the final evaluation's pictures
    events.out.tfevents.* TensorBoard
"""

import io
import json
import os

import numpy as np
from etils import epath

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
IMAGES_DIR = "images"
CHECKPOINTS_DIR = "checkpoints"
CHECKSUMS_FILE = "jvision_checksums.json"  # In each committed checkpoint step directory.


def is_uri(path: str | os.PathLike) -> bool:
    """True for bucket paths (`gs://…`, `s3://…`), which are absolute already."""
    return "://" in os.fspath(path)


def path(workdir: str | os.PathLike) -> epath.Path:
    """The workdir as an absolute `epath.Path` (local paths resolved, bucket paths kept)."""
    if is_uri(workdir):
        return epath.Path(os.fspath(workdir))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(workdir))))


def finished_step(workdir: epath.Path) -> int | None:
    """The step `results.json` reports, when that step's checkpoint is committed and sealed;
    None when the run has not finished, or its results and checkpoints disagree (a rerun of the
    same command repairs that)."""
    results = workdir / RESULTS_FILE
    if not results.exists():
        return None
    try:
        step = int(read_json(results)["step"])
    except (ValueError, KeyError, TypeError, OSError):
        return None
    sealed = workdir / CHECKPOINTS_DIR / str(step) / CHECKSUMS_FILE
    return step if sealed.exists() else None


def write_json(file: epath.Path, payload) -> None:
    """Writes `payload` as JSON atomically on local disks (a temporary file, then a rename), so a
    reader never sees half a file."""
    text = json.dumps(payload, indent=2, sort_keys=True, default=str)
    temporary = file.parent / f".{file.name}.tmp"
    temporary.write_text(text)
    temporary.replace(file)


def read_json(file: epath.Path):
    return json.loads(file.read_text())


def save_png(file: epath.Path, picture: np.ndarray) -> None:
    """Writes an [H, W, C] uint8 picture (C is 1 or 3)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(buffer, "PNG")
    file.write_bytes(buffer.getvalue())


HOLDER_FILE = ".jvision_lock.json"


class Lock:
    """One training process per workdir: an advisory `flock` on the workdir directory itself.

    The OS releases it when the holder exits or dies (kill -9 included), so it never goes stale.
    While held, `HOLDER_FILE` names the holder (pid, host, start) for the one-line refusal; it is
    written only once the run has passed its checks, and removed at exit. Local disks and NFSv4
    enforce it across hosts; on a bucket (`gs://`) nothing can: there, make sure one job writes a
    workdir (the launch scripts run one job per workdir).
    """

    def __init__(self, root: epath.Path):
        self.root = root
        self._descriptor: int | None = None

    def acquire(self) -> None:
        """Takes the lock (creating the workdir if needed); `UserError` if another run holds it."""
        import fcntl
        import logging

        from jvision.errors import UserError

        if is_uri(self.root):
            logging.warning("no lock on %s: buckets cannot be locked", self.root)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise UserError(
                f"{self.root} is in use by another run ({self._holder()}); wait for it to finish, "
                "stop it (SIGTERM saves a checkpoint), or use another --workdir"
            ) from None
        self._descriptor = descriptor

    def _holder(self) -> str:
        try:
            holder = read_json(self.root / HOLDER_FILE)
            return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
        except (OSError, ValueError, KeyError):
            return "starting up"

    def announce(self) -> None:
        """Records who holds the lock (after the run's checks, so refused runs write nothing)."""
        import datetime
        import socket

        if self._descriptor is not None:
            since = datetime.datetime.now().isoformat(timespec="seconds")
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
            write_json(self.root / HOLDER_FILE, holder)

    def release(self) -> None:
        if self._descriptor is not None:
            (self.root / HOLDER_FILE).unlink(missing_ok=True)
            os.close(self._descriptor)  # Closing the descriptor drops the flock.
            self._descriptor = None
