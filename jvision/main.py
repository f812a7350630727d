"""Command line: `python -m jvision.main --config=configs/vae_mnist.py --workdir=DIR`.

`--config.KEY=VALUE` overrides any config key; `--config=FILE:tiny` selects a config's tiny variant.
Bad input ends with one line on stderr and exit status 1; a run stopped by SIGTERM or Ctrl-C saves
a checkpoint, says so in one line and exits with status 75 (rerun to resume), also while it is
still starting. Several processes: `--distributed` (Cloud TPU, Slurm, GKE) or the three flags
`--coordinator_address`, `--num_processes`, `--process_id`. The work is in `jvision.train`.
"""

from absl import app

from jvision import cli

_FLAGS = cli.RunFlags("Directory for checkpoints, logs and results.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")

    def work():
        cli.start(processes=True)
        from jvision import train  # After the flags: bad input is refused before its imports.

        train.train_and_evaluate(_FLAGS.config, _FLAGS.workdir)

    cli.run(work)


if __name__ == "__main__":
    app.run(main, flags_parser=_FLAGS.parse)
