"""Command lines: a model's weights in from PyTorch, and back out.

    python -m jvision.convert --from-torch=FILE.pt --config=CONFIG[:ARG] [--config.KEY=VALUE …]
        [--layout=tutorial] --out=DIR
    python -m jvision.convert --to-torch --workdir=DIR [--step=N] [--weights=live]
        [--layout=tutorial] --out=FILE.pt

`--from-torch` reads a PyTorch `state_dict` (bare, or a checkpoint dict's `model_state_dict`)
laid out as the config's PyTorch twin (`benchmarks/torch_models/`, which follow the original
projects' layers and names) and writes DIR, a folder in the model zoo's format (`jvision.zoo`:
params.npz, config.json, results.json with step 0 and no metrics, card.json saying where it came
from) that jvision opens like a workdir:
`jvision.evaluate.load(DIR)`, `--config.init_from.workdir=DIR`, `python -m jvision.export
--workdir=DIR`. `--to-torch` writes the state_dict of the twin for any workdir's or zoo entry's
config, from the model as `jvision.evaluate.load` gives it (parameters averaged under EMA unless
`--weights=live`, the state computed from data as its evaluations use it), which
`twin.load_state_dict(torch.load(FILE))` loads strictly (jvision keeps no `num_batches_tracked`:
they are 0).

The mapping is the twins' own (`benchmarks.torch_models.jvision_to_torch`, and its inverse
`torch_to_jvision`): NCHW/OIHW tensors to NHWC/HWIO arrays, transposed convolutions' kernels
flipped, flattened features and pixel-shuffle channels permuted where the two orders differ;
jvision -> torch -> jvision gives back the same bits. The encoding detector's exemplar bank is
state computed from data: the state_dict's `bank` [classes, C, h, w] and `bank_counts` [classes]
(buffers of its twin) are taken as they are, nothing is recomputed (a twin's own initialisation
has an empty bank: zeros, in which nothing is detected).

`--layout=tutorial` (the SSD only) is the state_dict of the tutorial's own module
(`SSD300(config, base_conv, aux_conv)` of PhanHuyThong's main.ipynb): its layers named by
position (`base_conv.module_list.{7s+3l}.conv.*` and `.{7s+3l+1}.*` for layer l of base stage s,
`aux_conv.module_list.{6s+3l}…` likewise), each head's box and class convs apart
(`pred_conv.loc_module_list.{i}.1.*`, `pred_conv.cla_module_list.{i}.1.*`; jvision and the twin
fuse them, box channels first) and no priors (`benchmarks.torch_models.ssd.to_tutorial`). Its
priors are a plain attribute, computed in a transposed frame: each prior's row and column centres
swapped (and its last map's extra prior of size 1). The model learned its offsets against those,
so `--from-torch` gives the model the tutorial's priors (`ssd.tutorial_priors`), with which
jvision's decoding finds the boxes the tutorial's finds; `--to-torch` writes no priors, and
refuses a model whose priors are not the tutorial's (one trained by jvision: its boxes would land
transposed in the tutorial's module).

Bad input ends with one line on stderr and exit status 1, nothing written: a missing file, a
state_dict whose keys or shapes do not fit the config's twin (the first differing ones named), an
--out that exists and is not an empty folder, or lies in the model zoo. PyTorch is needed
(`pip install 'jvision[bench]'`), and the repository's `benchmarks/` beside the `jvision` package.
"""

import hashlib
import io
import logging
import os
import shutil
import sys
import types
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
from absl import app, flags
from etils import epath

from jvision import cli, config_checks, config_files, config_overrides, config_saved, models, zoo
from jvision.errors import UserError
from jvision.safety import files

if TYPE_CHECKING:
    import torch

log = logging.getLogger("jvision.convert")  # Not __name__: run as __main__.

LAYOUTS = ("twin", "tutorial")
TUTORIAL_FAMILY = "ssd"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # Holds benchmarks/.

_OVERRIDES: dict[str, str] = {}
_FROM_ONLY, _TO_ONLY = ("config",), ("workdir", "step", "weights")


# --- The conversions ---------------------------------------------------------------------------


def twins() -> types.ModuleType:
    """`benchmarks.torch_models`, the PyTorch twins; `UserError` without PyTorch or them."""
    try:
        import torch  # noqa: F401  Only here: the rest of jvision runs without PyTorch.
    except ImportError:
        raise UserError("converting weights needs PyTorch: pip install 'jvision[bench]'") from None
    if not os.path.isdir(os.path.join(ROOT, "benchmarks", "torch_models")):
        raise UserError(f"converting weights needs the repository's benchmarks/ beside {ROOT}")
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from benchmarks import torch_models

    return torch_models


def twin_of(config: ml_collections.ConfigDict) -> "torch.nn.Module":
    """The PyTorch twin of `config`'s model (torch's own initialisation); `UserError` for a
    family without one."""
    tm = twins()
    if config.model.name not in tm.FAMILIES:
        raise UserError(
            f"model.name {config.model.name!r} has no PyTorch twin; these have: "
            f"{', '.join(sorted(tm.FAMILIES))}"
        )
    return tm.build(config)


def _check_layout(layout: str, config: ml_collections.ConfigDict) -> None:
    if layout not in LAYOUTS:
        raise UserError(f"--layout={layout}: use one of {', '.join(LAYOUTS)}")
    if layout == "tutorial" and config.model.name != TUTORIAL_FAMILY:
        raise UserError(
            f"--layout=tutorial is the SSD tutorial's; model.name {config.model.name!r} has the "
            "twin's layout only"
        )


def template(config: ml_collections.ConfigDict) -> dict:
    """The structure of `config`'s model variables: `nnx.to_pure_dict` of its state, abstract
    arrays (shapes and dtypes, nothing computed)."""
    from flax import nnx

    family = models.get(config.model)
    abstract = nnx.eval_shape(lambda: family.build(nnx.Rngs(config.seed)))
    return nnx.to_pure_dict(nnx.state(abstract))


def to_torch(variables: dict, config: ml_collections.ConfigDict, layout: str = "twin") -> dict:
    """jvision variables (`nnx.to_pure_dict(nnx.state(model))`) -> the state_dict of the twin
    of `config`'s model (or the SSD tutorial's module, `layout`), in its order, float32 tensors
    (`num_batches_tracked` 0). `UserError` for the tutorial's layout unless the model's priors
    are the tutorial's (`check_tutorial_priors`)."""
    _check_layout(layout, config)
    tm = twins()
    twin = twin_of(config)
    if layout == "tutorial":
        check_tutorial_priors(variables["priors"], config, twin.priors.numpy())
    converted = tm.jvision_to_torch(twin, variables)
    state = {name: converted.get(name, value) for name, value in twin.state_dict().items()}
    return tm.ssd.to_tutorial(state) if layout == "tutorial" else state


def check_tutorial_priors(priors, config: ml_collections.ConfigDict, own: np.ndarray) -> None:
    """`UserError` unless `priors` [P, 4] are those the SSD tutorial's module computes for
    `config` (`ssd.tutorial_priors`, its transposed frame): that module decodes the model's
    offsets against its own priors. `own`: jvision's priors for `config`, named when they are the
    model's."""
    priors = np.asarray(priors)
    tutorial = twins().ssd.tutorial_priors(config.model)
    if priors.shape == tutorial.shape and np.allclose(priors, tutorial, rtol=0, atol=1e-6):
        return
    if priors.shape == own.shape and np.allclose(priors, own, rtol=0, atol=1e-6):
        which = "jvision's (a model trained by jvision)"
    else:
        which = "neither jvision's nor the tutorial's"
    raise UserError(
        f"--layout=tutorial: the model's priors are {which}; the tutorial's module computes its "
        "own, in its transposed frame, and would decode the model's offsets against them to "
        "boxes in the wrong place. Only a model converted from the tutorial's layout goes back to "
        "it; --layout=twin writes the priors with the weights"
    )


def from_torch(
    state: dict, config: ml_collections.ConfigDict, layout: str = "twin", where: str = "state_dict"
) -> dict:
    """A state_dict laid out as `config`'s twin (or the SSD tutorial's module, `layout`, whose
    priors are then the tutorial's) -> jvision variables: the nested dict of
    `nnx.to_pure_dict(nnx.state(model))`, NumPy arrays of the model's dtypes. `UserError` naming
    the first keys or the shape that do not fit (`where` names the state_dict)."""
    _check_layout(layout, config)
    tm = twins()
    twin = twin_of(config)
    expected = twin.state_dict()
    if layout == "tutorial":
        expected = tm.ssd.to_tutorial(expected)
    optional = {name for name in expected if name.endswith("num_batches_tracked")}
    shapes = {name: tuple(v.shape) for name, v in expected.items()}
    _check_fits(state, shapes, optional, where, layout)
    if layout == "tutorial":
        state = tm.ssd.from_tutorial(state, twin, config.model)
    return tm.torch_to_jvision(twin, state, template(config))


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


# What a state_dict of each layout is checked against: (in full, in short).
TARGETS = {
    "twin": ("the config's PyTorch twin", "the config's twin"),
    "tutorial": ("the SSD tutorial's module for the config", "the tutorial's module"),
}
TUTORIAL_PREFIXES = ("base_conv.", "aux_conv.", "pred_conv.")  # Its modules' attribute names.


def _layout_hint(unexpected: list[str], layout: str) -> str:
    """A hint when the unexpected names are the other layout's."""
    tutorial = any(name.startswith(TUTORIAL_PREFIXES) for name in unexpected)
    if layout == "twin" and tutorial:
        return " (the SSD tutorial's own names: --layout=tutorial)"
    if layout == "tutorial" and any(name.startswith("network.") for name in unexpected):
        return " (the twin's names: leave out --layout=tutorial)"
    return ""


def _check_fits(state: dict, expected: dict, optional: set, where: str, layout: str) -> None:
    """`UserError` unless `state` has `expected`'s names (those in `optional` may be absent)
    and shapes; the message names what `layout` is checked against, with a hint for names of
    the other layout."""
    target, short = TARGETS[layout]
    missing = [name for name in expected if name not in state and name not in optional]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        parts = [f"lacks {_some(missing)}"] if missing else []
        parts += [f"has {_some(unexpected)}, which {short} has not"] if unexpected else []
        hint = _layout_hint(unexpected, layout)
        raise UserError(f"{where} does not fit {target}: it {'; it '.join(parts)}{hint}")
    for name, value in state.items():
        if tuple(value.shape) != expected[name]:
            raise UserError(
                f"{where}: {name} has shape {list(value.shape)}; {short} has {list(expected[name])}"
            )


CHECKPOINT_KEY = "model_state_dict"  # A checkpoint dict's state_dict (the SSD tutorial's).


def _numpy_globals() -> list:
    """What pickled NumPy arrays and scalars of numbers are rebuilt with, under NumPy 1's and 2's
    module names, for `torch.load(weights_only=True)`: a checkpoint may hold some beside its
    state_dict (the SSD tutorial's keeps its config, whose prior scales are an array). They
    rebuild numbers from bytes and call nothing else."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    numeric = "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"]
    rebuilders = [np.ndarray, np.dtype, *{type(np.dtype(code)) for code in numeric}]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        rebuilders.append((multiarray._reconstruct, f"{module}._reconstruct"))
        rebuilders.append((multiarray.scalar, f"{module}.scalar"))
    return rebuilders


def _is_state_dict(value) -> bool:
    import torch

    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def load_state_dict(path: str | os.PathLike) -> dict:
    """The state_dict in a `torch.save` file: the file's dict of names to tensors, or its
    `model_state_dict` (a checkpoint dict, as the SSD tutorial saves). Read with
    `torch.load(weights_only=True)`, NumPy arrays allowed; `UserError` when it cannot be read or
    holds something else."""
    import torch

    path = epath.Path(path)
    try:
        with path.open("rb") as file, torch.serialization.safe_globals(_numpy_globals()):
            loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # Whatever torch's unpickler raises, on one line.
        message = (str(error).strip().splitlines() or [type(error).__name__])[0].split(". ")[0]
        raise UserError(
            f"cannot read {path} as a PyTorch state_dict ({message}); write one with "
            "torch.save(model.state_dict(), FILE)"
        ) from None
    if _is_state_dict(loaded):
        return dict(loaded)
    if isinstance(loaded, dict) and _is_state_dict(loaded.get(CHECKPOINT_KEY)):
        return dict(loaded[CHECKPOINT_KEY])
    named = isinstance(loaded, dict)
    inner = [k for k, v in loaded.items() if isinstance(v, dict)] if named else []
    hint = f" (its {inner[0]!r} may be one: save that alone)" if inner else ""
    raise UserError(
        f"{path} holds a {type(loaded).__name__}, not a state_dict (names to tensors) nor a dict "
        f"with one as {CHECKPOINT_KEY!r}{hint}"
    )


def state_dict_bytes(state: dict) -> bytes:
    """`state` as `torch.save` writes it to a file."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_folder(
    out: epath.Path, variables: dict, config: ml_collections.ConfigDict, about: dict
) -> dict:
    """Writes `variables` and `config` to `out` as a model zoo entry (`zoo.write`, step 0, no
    metrics), whole or not at all: into a hidden temporary folder beside it, renamed to `out`
    (which is absent or empty). Returns the card."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = epath.Path(files.temporary_name(out))
    try:
        card = zoo.write(
            temporary,
            variables,
            config_saved.as_json(config.to_dict()),
            {"step": 0, "metrics": {}},
            about,
        )
        os.replace(temporary, out)  # Replaces an empty folder.
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return card


# --- The command line --------------------------------------------------------------------------


def define_flags() -> None:
    """The command's flags, defined when it runs (importing this module defines none, so that
    its functions can be used beside other commands' flags)."""
    flags.DEFINE_string("from-torch", None, "A PyTorch state_dict file to convert.")
    flags.DEFINE_bool("to-torch", False, "Write the state_dict of --workdir's model.")
    flags.DEFINE_string("config", None, "With --from-torch: FILE or FILE:ARG (e.g. :tiny).")
    flags.DEFINE_string("workdir", None, "With --to-torch: a run's directory or zoo:NAME.")
    flags.DEFINE_integer("step", None, "With --to-torch: checkpoint step; default the latest.")
    flags.DEFINE_enum(
        "weights",
        "averaged",
        ["averaged", "live"],
        "With --to-torch and parameter EMA: the averaged parameters or the trained (live) ones.",
    )
    flags.DEFINE_enum(
        "layout", "twin", list(LAYOUTS), "The state_dict's names: the twin's or the SSD tutorial's."
    )
    flags.DEFINE_string("out", None, "--from-torch: a new folder; --to-torch: a file.")


def _flag(name: str):
    return flags.FLAGS[name].value


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing (`cli.parse_flags`), then which direction and its flags: one line and
    exit 1 for a flag of the other direction or a missing one."""
    rest, overrides = cli.parse_flags(argv, required=("out",))
    given = {name for name in (*_FROM_ONLY, *_TO_ONLY) if flags.FLAGS[name].present}
    if (_flag("from-torch") is None) == (not _flag("to-torch")):
        cli.fail("give one of --from-torch=FILE.pt (with --config) and --to-torch (with --workdir)")
    if _flag("to-torch"):
        if not _flag("workdir"):
            cli.fail("--to-torch needs --workdir (a run's directory or zoo:NAME)")
        wrong = sorted(given & set(_FROM_ONLY)) + (["config.KEY=VALUE"] if overrides else [])
    else:
        if not _flag("config"):
            cli.fail("--from-torch needs --config (the model the state_dict is for)")
        wrong = sorted(given & set(_TO_ONLY))
    if wrong:
        direction = "--to-torch" if _flag("to-torch") else "--from-torch"
        cli.fail(f"{direction} takes no --{', --'.join(wrong)}")
    _OVERRIDES.update(overrides)
    return rest


def _out_folder(text: str) -> epath.Path:
    """`--out` of --from-torch, checked: a new or empty local folder outside the model zoo."""
    zoo.refuse_writing(text, "--out")
    if files.is_uri(text):
        raise UserError(f"--out {text}: converted folders are read from disk; give a local one")
    out = files.path(text)
    files.check_directory(out, "--out")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} exists and is not empty; give a new or empty folder")
    return out


def _out_file(text: str) -> epath.Path:
    """`--out` of --to-torch, checked: a file (not a folder) outside the model zoo."""
    zoo.refuse_writing(text, "--out")
    out = files.path(text)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name")
    files.check_directory(out.parent, "--out's folder")
    return out


def convert_from_torch() -> None:
    """`--from-torch`: checks everything, then writes the folder."""
    out = _out_folder(_flag("out"))
    source = files.path(_flag("from-torch"))
    if not source.is_file():
        raise UserError(f"--from-torch {source}: no such file")
    config = config_files.load(_flag("config"))
    config_overrides.apply_overrides(config, _OVERRIDES)
    config_checks.validate(config)
    models.check_name(config.model.name)
    _check_layout(_flag("layout"), config)
    twins()  # PyTorch is there, before the file is read.
    variables = from_torch(load_state_dict(source), config, _flag("layout"), str(source))
    about = {
        "what": "converted from a PyTorch state_dict",
        "source": os.fspath(source),
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "family": config.model.name,
        "config": _flag("config"),
        "overrides": dict(_OVERRIDES),
        "layout": _flag("layout"),
        "twin": f"benchmarks/torch_models/{config.model.name}.py",
    }
    write_folder(out, variables, config, about)
    log.info("wrote %s: %s's weights from %s", out, config.model.name, source)


def convert_to_torch() -> None:
    """`--to-torch`: checks everything, reads the model, then writes the file."""
    from flax import nnx

    from jvision import evaluate  # Only here: JAX's imports after the flags' checks.
    from jvision.safety import reader

    out = _out_file(_flag("out"))
    config = config_saved.from_saved(reader.read_meta(_flag("workdir"), _flag("step"))["config"])
    _check_layout(_flag("layout"), config)
    twin_of(config)  # A family with a twin, and PyTorch there, before the model is read.
    run = evaluate.load(_flag("workdir"), _flag("step"), weights=_flag("weights"))
    state = to_torch(nnx.to_pure_dict(nnx.state(run.model)), run.config, _flag("layout"))
    files.write_atomically(out, state_dict_bytes(state))
    log.info("wrote %s: the state_dict of %s's twin, step %d", out, run.family.name, run.step)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")

    def work():
        cli.start()
        if _flag("to-torch"):
            convert_to_torch()
        else:
            convert_from_torch()

    cli.run(work)


if __name__ == "__main__":
    define_flags()
    app.run(main, flags_parser=parse_flags)
