"""A run's directory, local or in a bucket: its layout, and whole-file writes that never leave half
a file.

All workdir I/O goes through `etils.epath`, so `gs://bucket/run` works wherever a local path does
(Orbax, TensorBoard's writers and TFDS take the same paths). Layout:

    checkpoints/<step>/   Orbax checkpoints (`jvision.safety.checkpoints`)
    config.json           the resolved config of the last run started here
    results.json          the final evaluation: {"step": N, "metrics": {...}}
    images/<name>.png     the final evaluation's pictures
    events.out.tfevents.* TensorBoard
"""

import contextlib
import hashlib
import io
import json
import os
import secrets
import tempfile

import numpy as np
from etils import epath
from PIL import Image

from jvision.errors import UserError

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


GLOB_CHARACTERS = "[]*?"


def without_glob_characters(folder: epath.Path) -> epath.Path:
    """`folder` as Orbax and tensorstore may be given it. They find a checkpoint's parts with
    glob patterns built from its path, so `[`, `]`, `*`, `?` in it would be read as patterns
    (`run[1]` matches `run1`, not itself). A local folder with them is reached through a
    symbolic link in the temporary directory instead (one per folder, named by its hash; the
    folder must exist). A bucket path with them is refused."""
    text = os.fspath(folder)
    if not any(c in text for c in GLOB_CHARACTERS):
        return folder
    if is_uri(text):
        raise UserError(
            f"{text}: a bucket workdir cannot contain any of {GLOB_CHARACTERS} (Orbax reads "
            "them as patterns); choose another name"
        )
    links = os.path.join(tempfile.gettempdir(), f"jvision-paths-{os.getuid()}")
    os.makedirs(links, exist_ok=True)
    link = os.path.join(links, hashlib.sha256(text.encode()).hexdigest()[:32])
    if not (os.path.islink(link) and os.readlink(link) == text):
        temporary = temporary_name(link)
        os.symlink(text, temporary)
        os.replace(temporary, link)  # Atomic: concurrent processes agree.
    return epath.Path(link)


def check_directory(folder: epath.Path, name: str) -> None:
    """`UserError` when `folder` cannot be a directory to write into: it is a file, or lies under
    one (checked on disks; a bucket has no such paths)."""
    if is_uri(folder):
        return
    local = os.fspath(folder)
    if os.path.exists(local) and not os.path.isdir(local):
        raise UserError(f"{name} {local} is a file, not a directory")
    parent = os.path.dirname(local)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise UserError(f"{name} {local} lies under {parent}, which is a file, not a directory")


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


def temporary_name(final: str | os.PathLike) -> str:
    """A hidden name beside `final` that no other writer uses (this process's pid and 64 random
    bits): two processes writing one file at once each rename their own temporary file."""
    folder, name = os.path.split(os.fspath(final))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


@contextlib.contextmanager
def naming(file: epath.Path):
    """An `OSError` raised inside (a full disk while writing, say) names `file`, the file being
    written, rather than no file or a temporary one: the one-line report names what failed."""
    try:
        yield
    except OSError as error:
        if error.errno is None or error.filename == os.fspath(file):
            raise
        raise OSError(error.errno, error.strerror, os.fspath(file)) from error


def write_atomically(file: epath.Path, data: bytes) -> None:
    """Writes a whole file so that a reader never sees half of it, and a failed write (a full
    disk) leaves the old file, not a truncated one: on disks, a temporary file of this writer's
    own (`temporary_name`) renamed over it (removed when the write fails); in a bucket an object
    appears whole when its upload ends. Of several writers at once, the last rename wins."""
    if is_uri(file):
        file.write_bytes(data)
        return
    temporary = epath.Path(temporary_name(file))
    try:
        with naming(file):
            temporary.write_bytes(data)
            temporary.replace(file)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(file: epath.Path, payload) -> None:
    """Writes `payload` as JSON, atomically (`write_atomically`)."""
    write_atomically(file, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(file: epath.Path, attempts: int = 3):
    """The JSON in `file`. In a bucket, a file rewritten while it is read (the lease's heartbeat,
    `results.json`) can come back cut at the old object's length: gcsfs and TensorFlow learn the
    size, then fetch that many bytes of whichever object is there by then. JSON that does not
    parse is read again there, `attempts` times in all; on disks a file is replaced whole."""
    for attempt in range(1, attempts + 1):
        text = file.read_text()
        try:
            return json.loads(text)
        except ValueError:
            if attempt == attempts or not is_uri(file):
                raise


def png_bytes(picture: np.ndarray) -> bytes:
    """An [H, W, C] uint8 picture (C is 1 or 3) encoded as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(buffer, "PNG")
    return buffer.getvalue()


def save_png(file: epath.Path, picture: np.ndarray) -> None:
    """Writes an [H, W, C] uint8 picture (C is 1 or 3), atomically."""
    write_atomically(file, png_bytes(picture))
