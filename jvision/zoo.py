"""The model zoo: trained models kept in the repository, in `zoo/<name>/`, opened like workdirs.

`zoo:<name>` (or the entry's folder) works wherever a workdir is read: `jvision.evaluate.load`,
`python -m jvision.evaluate --workdir=zoo:<name>`, `--config.init_from.workdir=zoo:<name>`,
`python -m jvision.export`. Nothing writes into an entry: a training, pictures or an export
pointed into the zoo are refused with one line (`refuse_writing`).

An entry holds:

    params.npz    the model's variables as NumPy arrays, one per variable, named by its path
                  ("encoder/0/conv/kernel"): parameters (the averaged ones of a run with EMA),
                  BatchNorm statistics, state computed from data (the encoding detector's bank),
                  no optimizer state; `np.load` reads it without jvision
    config.json   the config of the run (keys added since take their defaults)
    results.json  the run's final evaluation on the whole split, as its workdir wrote it
    card.json     what it is: data and split, steps, seed, machine and wall time, the command,
                  the data's licence, the SHA-256 of the three files above, and `rescore`: the
                  metrics of a fixed part of the test split computed in float64 (`rescore`),
                  which the tests recompute on every CPU
    README.md     the card for people

Arrays are float32 as trained, except where an entry's card says it keeps its largest arrays
as float16 to stay within `MAX_ENTRY_BYTES` (the transfer classifiers' dense layer): its
numbers are then those of the stored weights, measured as stored.
"""

import hashlib
import json
import os

import numpy as np
from etils import epath

from jvision.errors import UserError
from jvision.safety import files

PREFIX = "zoo:"
ROOT = epath.Path(
    os.environ.get("JVISION_ZOO")
    or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zoo")
)
PARAMS_FILE, CARD_FILE = "params.npz", "card.json"
CHECKED_FILES = (PARAMS_FILE, files.CONFIG_FILE, files.RESULTS_FILE)
MAX_ENTRY_BYTES = 5_000_000
MAX_ZOO_BYTES = 25_000_000


def names() -> list[str]:
    """The entries of the zoo."""
    if not ROOT.exists():
        return []
    return sorted(entry.name for entry in ROOT.iterdir() if is_entry(entry))


def is_entry(path: epath.Path) -> bool:
    return (path / CARD_FILE).exists() and (path / PARAMS_FILE).exists()


def resolve(workdir: str | os.PathLike) -> epath.Path | None:
    """The zoo entry `workdir` names (`zoo:<name>`, or an entry's folder), else None;
    `UserError` for `zoo:<name>` of no entry, naming the entries."""
    text = os.fspath(workdir)
    if text.startswith(PREFIX):
        entry = ROOT / text[len(PREFIX) :]
        if not is_entry(entry):
            raise UserError(
                f"{text}: no such zoo entry in {ROOT}; the zoo has {', '.join(names()) or 'none'}"
            )
        return entry
    if files.is_uri(text):
        return None
    path = files.path(text)
    return path if is_entry(path) else None


def refuse_writing(path: str | os.PathLike, what: str) -> None:
    """`UserError` when `path` is a zoo entry or lies in the zoo: entries are read-only."""
    text = os.fspath(path)
    inside = not files.is_uri(text) and (
        text.startswith(PREFIX)
        or os.path.commonpath([os.fspath(files.path(text)), os.fspath(ROOT)]) == os.fspath(ROOT)
    )
    if inside or resolve(text) is not None:
        raise UserError(
            f"{what} {text} is in the model zoo, which is read-only: use a folder of your own "
            "(to start from a zoo model: --config.init_from.workdir=zoo:NAME)"
        )


def card(entry: epath.Path) -> dict:
    return files.read_json(entry / CARD_FILE)


def _sha256(file: epath.Path) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def verify(entry: epath.Path) -> None:
    """`UserError` naming the first file whose SHA-256 is not the card's."""
    recorded = card(entry)["sha256"]
    for name in CHECKED_FILES:
        if _sha256(entry / name) != recorded[name]:
            raise UserError(
                f"zoo entry {entry}: {name} has changed (its SHA-256 is not the card's)"
            )


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict of arrays as `{"a/b/c": array}`."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = np.asarray(value)
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *parents, name = path.split("/")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = value
    return tree


def read(entry: epath.Path) -> tuple[dict, dict]:
    """`(the model's variables as a nested dict of float32 NumPy arrays, meta)`: meta as a
    checkpoint's (`step`, `config`), with `calibrated` True (the state computed from data is
    stored: nothing is recomputed)."""
    verify(entry)
    with (entry / PARAMS_FILE).open("rb") as file, np.load(file) as arrays:
        flat = {
            name: arrays[name].astype(np.float32)
            if arrays[name].dtype == np.float16
            else arrays[name]
            for name in arrays.files
        }
    meta = {
        "step": int(files.read_json(entry / files.RESULTS_FILE)["step"]),
        "config": files.read_json(entry / files.CONFIG_FILE),
        "calibrated": True,
    }
    return unflatten(flat), meta


def write(
    entry: epath.Path,
    variables: dict,
    config: dict,
    results: dict,
    about: dict,
    float16: tuple[str, ...] = (),
) -> dict:
    """Writes an entry: `variables` (a nested dict of arrays; those whose path is in `float16`
    stored as float16), the run's `config` and `results`, and the card: `about` plus the files'
    SHA-256. Returns the card."""
    entry.mkdir(parents=True, exist_ok=True)
    flat = flatten(variables)
    stored = {k: v.astype(np.float16) if k in float16 else v for k, v in flat.items()}
    with (entry / PARAMS_FILE).open("wb") as file:
        np.savez(file, **stored)
    files.write_json(entry / files.CONFIG_FILE, config)
    files.write_json(entry / files.RESULTS_FILE, results)
    content = {**about, "float16": sorted(float16)}
    content["sha256"] = {name: _sha256(entry / name) for name in CHECKED_FILES}
    files.write_json(entry / CARD_FILE, content)
    return content


def size(entry: epath.Path) -> int:
    """Bytes of an entry's files."""
    return sum(path.stat().length for path in entry.iterdir() if path.is_file())


def describe(entry: epath.Path) -> dict:
    """The card with the entry's name and size, for listings."""
    return {"name": entry.name, "bytes": size(entry), **card(entry)}


def dumps(tree) -> str:
    return json.dumps(tree, indent=2, sort_keys=True)
