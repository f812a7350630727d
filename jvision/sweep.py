"""Seeds and error bars: one config over several seeds, then mean ± std of every metric.

    python -m jvision.sweep --config=configs/patchvae_mnist.py --seeds=0,1,2 \
        --workdir=workdirs/patchvae_sweep [--config.KEY=VALUE ...]

Each seed trains in its own workdir `ROOT/seed_<s>` (`config.seed = s`), one after another, each
resumable like any run; seeds whose `results.json` is already final are not run again. Then the
`results.json` files are aggregated into `ROOT/sweep.json` and a Markdown table on stdout (mean ±
sample standard deviation over seeds, and n). `{seed}` in a string override is replaced by the
seed, e.g. `--config.init_from.workdir=workdirs/pretrain/seed_{seed}` pairs each transfer run with
the pretraining run of the same seed. `--aggregate_only` only aggregates existing seed workdirs.
"""

import math
import sys

import ml_collections
from absl import app, flags

from jvision import cli
from jvision.errors import UserError
from jvision.safety import files

_FLAGS = cli.RunFlags("Root directory: one seed_<s>/ per seed.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Comma-separated seeds.")
_AGGREGATE_ONLY = flags.DEFINE_bool(
    "aggregate_only", False, "Do not train; aggregate the seed workdirs found under --workdir."
)


def seed_workdir(root, seed: int):
    return root / f"seed_{seed}"


def with_seed(config, seed: int):
    """A copy of `config` for one seed: `seed` set, `{seed}` in string values replaced."""

    def fill(node):
        for key, value in node.items():
            if isinstance(value, ml_collections.ConfigDict):
                fill(value)
            elif isinstance(value, str) and "{seed}" in value:
                node[key] = value.replace("{seed}", str(seed))

    config = ml_collections.ConfigDict(config.to_dict())
    config.seed = seed
    fill(config)
    return config


def aggregate(results: dict[int, dict]) -> dict[str, dict]:
    """`{seed: results.json payload}` -> `{metric: {mean, std, n, values}}` (sample std, ddof 1;
    0 for one seed)."""
    metrics = sorted(set().union(*(r["metrics"] for r in results.values())))
    summary = {}
    for name in metrics:
        values = [r["metrics"][name] for r in results.values() if name in r["metrics"]]
        mean = sum(values) / len(values)
        variance = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
        summary[name] = {"mean": mean, "std": math.sqrt(variance), "n": len(values)}
        summary[name]["values"] = values
    return summary


def table(summary: dict[str, dict]) -> str:
    """The summary as a Markdown table."""
    lines = ["| metric | mean ± std | n | per seed |", "|---|---|---|---|"]
    for name, s in summary.items():
        values = ", ".join(f"{v:.4g}" for v in s["values"])
        lines.append(f"| `{name}` | {s['mean']:.4g} ± {s['std']:.2g} | {s['n']} | {values} |")
    return "\n".join(lines)


def run(config, root, seeds: list[int], train: bool = True) -> dict[str, dict]:
    """Trains (unless `train` is False) and aggregates; writes `root/sweep.json`."""
    import jax  # Here: bad input is refused before the trainer's seconds of imports.

    from jvision import train as trainer

    results = {}
    for seed in seeds:
        workdir = seed_workdir(root, seed)
        done = files.finished_step(workdir) == config.total_steps
        if train and not done:
            print(f"jvision.sweep: seed {seed}: training in {workdir}", file=sys.stderr)
            trainer.train_and_evaluate(with_seed(config, seed), str(workdir))
        elif train:
            print(f"jvision.sweep: seed {seed}: finished, reusing {workdir}", file=sys.stderr)
        if files.finished_step(workdir) is not None:
            results[seed] = files.read_json(workdir / files.RESULTS_FILE)
    if not results:
        raise UserError(f"no results.json under {root}/seed_*; run the sweep first")
    summary = aggregate(results)
    if jax.process_index() == 0:
        files.write_json(root / "sweep.json", {"seeds": sorted(results), "metrics": summary})
    return summary


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        seeds = [int(s) for s in _SEEDS.value]
    except ValueError:
        cli.fail(f"--seeds={','.join(_SEEDS.value)}: give comma-separated integers")
    cli.start(processes=True)
    root = files.path(_FLAGS.workdir)

    def work():
        summary = run(_FLAGS.config, root, seeds, train=not _AGGREGATE_ONLY.value)
        print(table(summary))

    cli.run(work)


if __name__ == "__main__":
    app.run(main, flags_parser=_FLAGS.parse)
