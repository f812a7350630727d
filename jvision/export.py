"""Command line: `python -m jvision.export --workdir=DIR --out=FILE [--step=N] [--weights=live]`.

Writes the family's `predict` with the workdir's trained weights as one file serialized by
`jax.export` (`jvision.evaluate.Run.export`): a process with JAX alone, without jvision, runs it
with `jax.export.deserialize(open(FILE, "rb").read()).call(images)`, for any batch size, on
CPU, GPU or TPU. docs/outputs.md describes its inputs and outputs. Bad input ends with one line
on stderr and exit status 1, checked before the model is read.
"""

import logging

from absl import app, flags

from jvision import cli, evaluate, zoo
from jvision.errors import UserError
from jvision.safety import files

log = logging.getLogger("jvision.export")  # Not __name__: run as __main__.

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory (local or gs://).")
_OUT = flags.DEFINE_string("out", None, "Where to write the exported predict.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step; default: the latest.")
_WEIGHTS = flags.DEFINE_enum(
    "weights",
    "averaged",
    ["averaged", "live"],
    "With parameter EMA: the averaged parameters or the trained (live) ones.",
)


def parse_flags(argv: list[str]) -> list[str]:
    rest, overrides = cli.parse_flags(argv, required=("workdir", "out"))
    if overrides:
        cli.fail("jvision.export takes no --config.KEY=VALUE: the checkpoint fixes the model")
    return rest


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")

    def work():
        cli.start()
        zoo.refuse_writing(_OUT.value, "--out")
        out = files.path(_OUT.value)
        if out.is_dir():
            raise UserError(f"--out {out} is a directory; give a file name")
        files.check_directory(out.parent, "--out's folder")
        run = evaluate.load(_WORKDIR.value, _STEP.value, weights=_WEIGHTS.value)
        data = run.export()
        out.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomically(out, data)
        shape = ", ".join(map(str, run.image_shape()))
        log.info(
            "wrote %s (%.1f MiB): %s's predict at step %d, images [N, %s]",
            out,
            len(data) / 2**20,
            run.family.name,
            run.step,
            shape,
        )

    cli.run(work)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
