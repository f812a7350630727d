"""Every config's `:tiny` results.json, recorded, then compared bit for bit after a change.

    python tests/tiny_results.py record BEFORE.json     # on the code before the change
    python tests/tiny_results.py compare BEFORE.json    # on the code after it, same machine

Either takes run names after the file (`record BEFORE.json ssd_mnist transfer_mnist_pretrained`)
to do only those runs, and the runs they start from; `compare` compares only what it ran.

A refactor must change no number: each run's `results.json` (metrics as written, floats compared
by their exact bits) must be equal. The runs happen as the tests run them (8 simulated CPU
devices), each in a fresh process, on this machine's CPU: float32 rounding differs between CPUs,
so a recording is compared only on the machine that made it. Datasets that cannot be read offline
(KITTI, CIFAR-100, ImageNet) run on TFDS's mocked data, as in the tests. `XLA_FLAGS` set in the
environment are kept: `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`
compares with a recording made before jvision chose its XLA:CPU settings (`jvision/xla_cpu.py`;
the scratch's pieces, its other setting, change no bit).
"""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCKED = {  # Configs whose data are TFDS's mocked examples: {name: num_examples}.
    "encoding_detector_kitti": 12,
    "patchvae_cifar100": 64,
    "transfer_cifar100": 64,
    "patchvae_imagenet": 16,
    "transfer_imagenet": 16,
}
# Runs that start from another run's workdir: {name: (config, the run it starts from)}.
FROM = {"transfer_cifar100": "patchvae_cifar100", "transfer_imagenet": "patchvae_imagenet"}
EXTRA = {  # Variants beside the config files: {name: (config, overrides, the run it starts from)}.
    "patchvae_mnist_vae": ("patchvae_mnist", ["--config.model.kind=vae"], None),
    "transfer_mnist_pretrained": ("transfer_mnist", [], "patchvae_mnist"),
    "draw_mnist_no_attention": ("draw_mnist", ["--config.model.use_attention=False"], None),
}


def _environment(shared: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["TFDS_DATA_DIR"] = os.path.join(shared, "tfds")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def _run_mocked(name: str, workdir: str, init_from: str | None, data_dir: str) -> None:
    """In this process: the config's tiny run on mocked TFDS data."""
    import tensorflow_datasets as tfds

    sys.path[:0] = [
        ROOT,
        os.path.join(ROOT, "tests"),
    ]  # This tree's jvision, whatever is installed.
    from helpers import load_config

    from jvision import train

    config = load_config(name, "tiny")
    config.data.data_dir = data_dir
    if init_from:
        config.init_from.workdir = init_from
    with tfds.testing.mock_data(num_examples=MOCKED[name]):
        train.train_and_evaluate(config, workdir)


def runs(only: list[str]) -> dict[str, tuple[str, list[str], str | None]]:
    """{name: (config, overrides, the run it starts from)}: every run, or those named in `only`
    and the runs they start from."""
    names = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
    every = {name: (name, [], FROM.get(name)) for name in names}
    every.update(EXTRA)
    unknown = sorted(set(only) - every.keys())
    if unknown:
        raise SystemExit(f"no tiny run {', '.join(unknown)}; the runs: {', '.join(every)}")
    wanted = set(only) | {every[name][2] for name in only} - {None}
    return {name: run for name, run in every.items() if not only or name in wanted}


def record(shared: str, only: list[str]) -> dict[str, dict]:
    env = _environment(shared)
    recorded = {}
    for name, (config, overrides, parent) in runs(only).items():
        workdir = os.path.join(shared, name)
        init = [f"--config.init_from.workdir={os.path.join(shared, parent)}"] if parent else []
        if config in MOCKED:
            parent_dir = os.path.join(shared, parent) if parent else ""
            command = [sys.executable, __file__, "mocked", config, workdir, parent_dir]
        else:
            command = [
                sys.executable,
                "-m",
                "jvision.main",
                f"--config=configs/{config}.py:tiny",
                f"--workdir={workdir}",
                *overrides,
                *init,
            ]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:  # Recorded as such: a run that fails before and after is unchanged.
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            recorded[name] = {"failed": lines[-1].replace(shared, "<runs>")}
        else:
            with open(os.path.join(workdir, "results.json")) as file:
                recorded[name] = json.load(file)
        print(f"{name}: {recorded[name]}", file=sys.stderr)
    return recorded


def main(argv: list[str]) -> None:
    if len(argv) == 5 and argv[1] == "mocked":
        _, _, name, workdir, init_from = argv
        _run_mocked(
            name, workdir, init_from or None, os.path.join(os.path.dirname(workdir), "mock")
        )
        return
    if len(argv) < 3 or argv[1] not in ("record", "compare"):
        raise SystemExit(__doc__)
    with tempfile.TemporaryDirectory() as shared:
        recorded = record(shared, argv[3:])
    if argv[1] == "record":
        with open(argv[2], "w") as file:
            json.dump(recorded, file, indent=1, sort_keys=True)
        return
    with open(argv[2]) as file:
        before = json.load(file)
    if argv[3:]:  # Only the runs asked for (and their parents) were run.
        before = {name: result for name, result in before.items() if name in recorded}
    changed = sorted(
        name for name in before.keys() | recorded.keys() if before.get(name) != recorded.get(name)
    )
    for name in changed:
        print(f"{name}: before {before.get(name)}\n{' ' * len(name)}  after  {recorded.get(name)}")
    if changed:
        raise SystemExit(f"{len(changed)} of {len(before)} tiny runs changed: {', '.join(changed)}")
    print(f"all {len(before)} tiny runs wrote the same results.json")


if __name__ == "__main__":
    main(sys.argv)
