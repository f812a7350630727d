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


def is_uri(path: str | os.PathLike) -> bool:
    """True for bucket paths (`gs://…`, `s3://…`), which are absolute already."""
    return "://" in os.fspath(path)


def path(workdir: str | os.PathLike) -> epath.Path:
    """The workdir as an absolute `epath.Path` (local paths resolved, bucket paths kept)."""
    if is_uri(workdir):
        return epath.Path(os.fspath(workdir))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(workdir))))


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
