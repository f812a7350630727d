"""A failing storage (full, read-only, forbidden, broken) as one line, and closing a run so that
an error while closing never hides the one that stopped it."""

import errno
import logging
import os
import re

log = logging.getLogger(__name__)


# Failures of the storage rather than of jvision: full, read-only, forbidden, broken, gone.
STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}
# The same failures as other libraries word them (tensorstore, TensorFlow, CLU's async writer).
_MESSAGES = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "Input/output error": errno.EIO,
}
_PATH = re.compile(r"""(gs://[^"':;\s]+|/[^"':;\s]+)""")


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _looks_like_a_file(path: str) -> bool:
    """A path in a message names a file when a folder above it (other than `/`) exists, or it
    is in a bucket: messages also hold TensorFlow's device names (`/job:localhost/...`), and
    the file may be gone (a failed save's temporary directory is removed)."""
    folder = os.path.dirname(path.rstrip("/"))
    while folder not in ("", "/"):
        if os.path.isdir(folder):
            return True
        folder = os.path.dirname(folder)
    return path.startswith("gs://")


def storage_failure(error: BaseException) -> str | None:
    """One line for an error caused by the storage (a full disk, a read-only mount, a missing
    permission, an I/O error), found anywhere in its chain of causes; None for any other error.
    """
    found = []  # (reason, path or None) of each cause that is a storage failure.
    for cause in _chain(error):
        if isinstance(cause, OSError) and cause.errno in STORAGE_ERRNOS:
            found.append((STORAGE_ERRNOS[cause.errno], cause.filename))
            continue
        text = str(cause)
        code = next((c for m, c in _MESSAGES.items() if m in text), None)
        if code is not None:
            path = next((p for p in _PATH.findall(text) if _looks_like_a_file(p)), None)
            found.append((STORAGE_ERRNOS[code], path))
    if not found:
        return None
    reason, path = next(((r, p) for r, p in found if p), found[0])  # The first naming a file.
    return reason + (f" ({path})" if path else "")


class Closing:
    """Calls its closers at exit, the last added first. An error while closing is logged, and
    raised only when no other error is on its way out (it must not hide what stopped the run)."""

    def __init__(self, *closers):
        self._closers = list(closers)

    def add(self, closer) -> None:
        self._closers.append(closer)

    def __enter__(self) -> "Closing":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        first = None
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as failure:
                quiet = error is not None and storage_failure(failure)  # Said once, by the error.
                (log.debug if quiet else log.warning)(
                    "while closing the run: %s: %s", type(failure).__name__, failure
                )
                first = first or failure
        if first is not None and error is None:
            raise first
