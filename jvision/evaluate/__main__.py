"""Command line: `python -m jvision.evaluate --workdir=DIR [--step=N] [--split=test]
[--images=DIR] [--config.KEY=VALUE …]`.

Prints `{"step": N, "metrics": {...}}` (the format of `results.json`) as JSON on stdout and, with
`--images`, writes the family's pictures there as PNGs. `--config.KEY=VALUE` changes what is
evaluated (e.g. `--config.data.name=full_mnist --config.eval_batch_size=100`), never the model.
Bad input ends with one line on stderr and exit status 1, checked before the model is read.
"""

import json
import sys

from absl import app, flags

from jvision import cli, evaluate, summaries, zoo
from jvision.safety import files

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (local or gs://).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_SPLIT = flags.DEFINE_string("split", None, "Evaluate every evaluation on this split instead.")
_EVALS = flags.DEFINE_list(
    "evals", None, "Only these of the run's evaluations (e.g. test: without the likelihood)."
)
_IMAGES = flags.DEFINE_string("images", None, "Write the pictures as PNGs to this directory.")
_WEIGHTS = flags.DEFINE_enum(
    "weights",
    "averaged",
    ["averaged", "live"],
    "With parameter EMA: the averaged parameters or the trained (live) ones.",
)

_OVERRIDES: dict[str, str] = {}


def parse_flags(argv: list[str]) -> list[str]:
    rest, overrides = cli.parse_flags(argv, required=("workdir",))
    _OVERRIDES.update(overrides)
    return rest


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")

    def work():
        cli.start()
        pictures = files.path(_IMAGES.value) if _IMAGES.value else None
        if pictures is not None:
            zoo.refuse_writing(pictures, "--images")
            files.check_directory(pictures, "--images")
        run = evaluate.load(_WORKDIR.value, _STEP.value, _OVERRIDES, _WEIGHTS.value)
        metrics = run.evaluate(_SPLIT.value, _EVALS.value)
        # The metrics first: a picture that cannot be written (a full disk) loses none of them.
        print(json.dumps({"step": run.step, "metrics": metrics}, indent=2, sort_keys=True))
        sys.stdout.flush()
        if pictures is not None:
            pictures.mkdir(parents=True, exist_ok=True)
            for name, grid in run.image_grids(_SPLIT.value).items():
                files.save_png(pictures / f"{name}.png", summaries.image_grid(grid)[0])

    cli.run(work)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
