"""Checksums of a checkpoint's files: tensorstore's array files carry none of their own, so a
flipped byte would otherwise load silently.

A committed checkpoint step directory holds `jvision_checksums.json`, the SHA-256 of every file
under it except the ones Orbax rewrites at its commit (`UNSEALED_FILES`). A step without that file
is not trusted: it is damaged (jvision seals every checkpoint before Orbax commits it). Paths go
through `etils.epath` and are listed with `iterdir` (relative names built here), so the same code
works on local disks, `tf.io.gfile` and gcsfs buckets.
"""

import hashlib

from etils import epath

from jvision.safety import files

CHECKSUMS_FILE = files.CHECKSUMS_FILE
# Orbax writes these when it commits a checkpoint, after the checksums are taken.
UNSEALED_FILES = (CHECKSUMS_FILE, "commit_success.txt", "_CHECKPOINT_METADATA")


def covered_files(step_dir: epath.Path) -> list[str]:
    """The names (relative, "/"-separated) of the files the checksums cover, sorted."""
    found = []

    def visit(folder: epath.Path, prefix: str) -> None:
        for child in folder.iterdir():
            name = child.name
            if child.is_dir():
                visit(child, f"{prefix}{name}/")
            elif prefix or name not in UNSEALED_FILES:
                found.append(f"{prefix}{name}")

    visit(step_dir, "")
    return sorted(found)


def sha256(file: epath.Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def seal(step_dir: epath.Path) -> None:
    """Records the SHA-256 of every file of a checkpoint step directory."""
    sums = {name: sha256(step_dir / name) for name in covered_files(step_dir)}
    files.write_json(step_dir / CHECKSUMS_FILE, {"sha256": sums})


def verify(step_dir: epath.Path) -> str:
    """ "" when every file matches its checksum, else what is wrong (a missing checksum file
    included: an unsealed checkpoint is not trusted)."""
    file = step_dir / CHECKSUMS_FILE
    if not file.exists():
        return f"it has no {CHECKSUMS_FILE}"
    try:
        expected = files.read_json(file)["sha256"]
    except (ValueError, KeyError, TypeError, OSError):
        return f"{CHECKSUMS_FILE} is unreadable"
    for name, digest in sorted(expected.items()):
        path = step_dir / name
        if not path.exists():
            return f"{name} is missing"
        if sha256(path) != digest:
            return f"{name} has changed"
    return ""
