"""Command line: `python -m jvision.evaluate --workdir=DIR [--step=N] [--split=test]
[--images=DIR] [--config.KEY=VALUE …]`.

Prints `{"step": N, "metrics": {...}}` (the format of `results.json`) as JSON on stdout and, with
`--images`, writes the family's pictures there as PNGs. `--config.KEY=VALUE` changes what is
evaluated (e.g. `--config.data.name=full_mnist --config.eval_batch_size=100`), never the model.
Bad input ends with one line on stderr and exit status 1.
"""

import json

from jvision import preemption

if __name__ == "__main__":  # First: a stop at any moment is one line and exit 75.
    preemption.stop_while_starting()

from absl import app, flags  # noqa: E402

from jvision import cli  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (local or gs://).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_SPLIT = flags.DEFINE_string("split", None, "Evaluate every evaluation on this split instead.")
_IMAGES = flags.DEFINE_string("images", None, "Write the pictures as PNGs to this directory.")

_OVERRIDES: dict[str, str] = {}


def parse_flags(argv: list[str]) -> list[str]:
    rest, overrides = cli.parse_flags(argv, required=("workdir",))
    _OVERRIDES.update(overrides)
    return rest


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")

    def work():
        cli.configure_logs()
        cli.hide_tensorflow_from_accelerators()
        from jvision import evaluate, summaries
        from jvision import workdir as workdir_lib

        run = evaluate.load(_WORKDIR.value, _STEP.value, _OVERRIDES)
        metrics = run.evaluate(_SPLIT.value)
        if _IMAGES.value:
            directory = workdir_lib.path(_IMAGES.value)
            directory.mkdir(parents=True, exist_ok=True)
            for name, grid in run.image_grids(_SPLIT.value).items():
                workdir_lib.save_png(directory / f"{name}.png", summaries.image_grid(grid)[0])
        print(json.dumps({"step": run.step, "metrics": metrics}, indent=2, sort_keys=True))

    cli.run(work)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
