"""The README's claim curves, from the runs of `experiments/claims.sh` (TensorBoard events and
`jvision.sweep` summaries):

    python experiments/plot_claims.py --root=ROOT --out=docs/claims_curves.png

Left: test NELBO against training step for DRAW with and without attention. Right: transfer top-1
(mean ± std over seeds) against the pretraining step the encoder was taken from, for PatchVAE,
the VAE and a random encoder.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402


def scalar_curve(workdir: pathlib.Path, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a scalar, whether written as a tensor (TensorFlow) or a plain scalar."""
    events = event_accumulator.EventAccumulator(str(workdir), size_guidance={"tensors": 0})
    events.Reload()
    if tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        return [p.step for p in points], [p.value for p in points]
    points = events.Tensors(tag)
    values = [float(tensor_util.make_ndarray(p.tensor_proto)) for p in points]
    return [p.step for p in points], values


def transfer_curve(root: pathlib.Path, kind: str):
    """Pretraining steps and the transfer top-1 mean and std at each, in percent."""
    points = []
    for sweep in root.glob(f"transfer_{kind}_at*/sweep.json"):
        step = int(sweep.parent.name.rsplit("_at", 1)[1])
        top1 = json.loads(sweep.read_text())["metrics"]["test/top1"]
        points.append((step, 100 * top1["mean"], 100 * top1["std"]))
    return [list(column) for column in zip(*sorted(points), strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, type=pathlib.Path)
    parser.add_argument("--out", required=True, type=pathlib.Path)
    args = parser.parse_args()
    fig, (draw, transfer) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, label in (("draw_attention", "with attention"), ("draw_no_attention", "without")):
        if (args.root / name).exists():
            draw.plot(*scalar_curve(args.root / name, "test/nelbo_nats"), marker="o", label=label)
    draw.set(title="DRAW, paper size: test NELBO", xlabel="training step", ylabel="nats")
    draw.legend()
    for kind, label in (("patchvae", "PatchVAE"), ("vae", "VAE")):
        steps, means, stds = transfer_curve(args.root, kind)
        transfer.errorbar(steps, means, yerr=stds, marker="o", capsize=3, label=label)
    random_sweep = args.root / "transfer_random" / "sweep.json"
    if random_sweep.exists():
        top1 = json.loads(random_sweep.read_text())["metrics"]["test/top1"]
        transfer.axhline(100 * top1["mean"], color="gray", linestyle="--", label="random encoder")
    transfer.set(
        title="Transfer top-1 (3 seeds, mean ± std)",
        xlabel="pretraining step of the frozen encoder",
        ylabel="test top-1 (%)",
    )
    transfer.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)


if __name__ == "__main__":
    main()
