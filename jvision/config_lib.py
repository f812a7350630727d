"""Shared config defaults and the `:arg` convention of config files.

Every config file defines `get_config(arg: str | None = None)`; `arg` is the text after the colon in
`--config=configs/x.py:ARG`. Each accepts `tiny`, a run of seconds used by the tests.
"""

import ml_collections

KNOWN_ARGS = ("tiny",)


def parse_arg(arg: str | None) -> str:
    """Returns the config variant named by `arg` ('' for the default); rejects unknown ones."""
    arg = (arg or "").strip()
    if arg and arg not in KNOWN_ARGS:
        raise ValueError(f"unknown config argument {arg!r}; known: {', '.join(KNOWN_ARGS)}")
    return arg


def base_config() -> ml_collections.ConfigDict:
    """The keys every experiment has; config files fill in `model`, `data` and the step counts."""
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.total_steps = 1000
    config.batch_size = 64  # Global, over all devices and processes.
    config.eval_batch_size = 256
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.ckpt_every_steps = 1000
    config.keep_checkpoints = 3
    config.num_summary_images = 64
    # Profile `profile_steps` train steps starting at `profile_first_step` (0 steps: off).
    config.profile_steps = 0
    config.profile_first_step = 10

    # Devices: a `data` × `fsdp` mesh (see jvision/sharding.py). fsdp > 1 shards every state array
    # of at least `fsdp_min_size` elements over that axis; data = -1 takes the other devices.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.fsdp_min_size = 2**14

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 1e-3
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.weight_decay = 0.0
    # >0: scale the gradient down to this global norm when it is larger, before weight decay
    # (as torch.nn.utils.clip_grad_norm_ before optimizer.step()); 0: no clipping.
    config.optimizer.clip_norm = 0.0
    # Piecewise-constant decay: multiply the rate by `decay_factor` at each of these steps.
    config.optimizer.decay_steps = ()
    config.optimizer.decay_factor = 0.1

    config.data = ml_collections.ConfigDict()
    config.data.name = "embedded_mnist"
    config.data.data_dir = ml_collections.config_dict.placeholder(str)  # None: TFDS's default.
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.shuffle = True
    config.data.image_size = 0  # >0: resize the shorter side and centre-crop to this size.
    config.data.random_flip = False  # Mirror training images left-right at random.
    config.data.binarize = "dynamic"  # 'dynamic' (Bernoulli resampled per epoch), 'none'.
    # Splits of at most this many examples keep each example in memory once it is read: the
    # TFDS reader's per-example cost would otherwise compete with the train step for the CPU
    # at every epoch. 0 turns it off.
    config.data.cache_max_examples = 100_000
    # Where the examples live: "host" (read, decoded and transformed by Grain on the host),
    # "device" (the split in device memory, each batch gathered and transformed inside the
    # jitted step), or "auto" (the device on accelerators for splits that fit; jvision/data/
    # on_device.py).
    config.data.placement = "auto"
    config.data.num_workers = 0  # Grain worker processes; 0 reads in threads of this process.
    config.data.num_threads = 4
    config.data.prefetch_batches = 4

    config.model = ml_collections.ConfigDict()
    config.model.name = ""
    # The dtype of convolutions' and dense layers' operands: "float32" or "bfloat16" (parameters,
    # optimizer state, norms and losses stay float32; jvision/ops/precision.py).
    config.model.dtype = "float32"

    # Initialise part of the model from another run before training (not when resuming): the
    # sub-tree `source` ("/"-separated; "" = the whole model) of the model saved in `workdir`
    # (checkpoint `step`; None = the latest) replaces the sub-tree `target` ("" = `source`).
    config.init_from = ml_collections.ConfigDict()
    config.init_from.workdir = ""  # Empty: off.
    config.init_from.step = ml_collections.config_dict.placeholder(int)
    config.init_from.source = ""
    config.init_from.target = ""

    # Evaluations: name -> {type: module in jvision.evaluators, split}. Metric names are
    # prefixed with the evaluation's name, e.g. `test/nelbo_nats`.
    config.evals = ml_collections.ConfigDict()
    return config


def importance_sampled_nll(
    config: ml_collections.ConfigDict, num_samples: int, samples_per_pass: int, batch_size: int
) -> None:
    """Adds `test/nll_is_nats` (`jvision.evaluators.importance_sampled_nll`) on the eval split,
    at the end of training only: K = `num_samples` importance samples per image."""
    config.evals.nll = dict(
        type="importance_sampled_nll",
        split=config.data.eval_split,
        prefix="test",
        final_only=True,
        num_samples=num_samples,
        samples_per_pass=samples_per_pass,
        batch_size=batch_size,
    )


def shrink_for_tests(config: ml_collections.ConfigDict) -> None:
    """The part every config's `tiny` variant shares: 4 steps of batch 16, evaluated on 40 test
    examples (importance sampling: 4 samples of 16), logging, evaluating and checkpointing every
    2 steps."""
    config.total_steps = 4
    config.batch_size = 16
    config.eval_batch_size = 16
    config.log_every_steps = 2
    config.eval_every_steps = 2
    config.ckpt_every_steps = 2
    config.num_summary_images = 8
    config.data.eval_split = "test[:40]"
    for eval_config in config.evals.values():
        eval_config.split = "test[:40]"
        if "num_samples" in eval_config:
            eval_config.update(split="test[:16]", num_samples=4, samples_per_pass=2, batch_size=8)


def load_config_module(path: str):
    """Imports a config file by path, so one config can build on another:
    `base = config_lib.load_config_module(os.path.join(os.path.dirname(__file__), "x.py"))`."""
    import importlib.util
    import os

    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"jvision_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load(spec: str) -> ml_collections.ConfigDict:
    """The config of `--config=FILE[:ARG]`: FILE's `get_config(ARG)` (ARG None when absent).
    `UserError` when the file cannot be loaded or refuses ARG."""
    import os

    from jvision.errors import UserError

    path, arg = spec, None
    head, colon, tail = spec.rpartition(":")
    if colon and "/" not in tail and not os.path.exists(spec):
        path, arg = head, tail
    if not os.path.isfile(path):
        raise UserError(f"cannot load the config file: {path} does not exist")
    try:
        config = load_config_module(path).get_config(arg)
    except Exception as error:  # The file's own code failed: its message, on one line.
        message = (str(error).strip().splitlines() or [type(error).__name__])[-1].strip()
        raise UserError(f"cannot load the config file {path}: {message}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise UserError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
    return config


def suggestions(key: str, config: ml_collections.ConfigDict) -> str:
    """ "; did you mean A or B?" for the keys of `config` closest to an unknown `key`, else ""."""
    import difflib

    keys = list(flatten(config.to_dict()))
    keys += sorted({k.rsplit(".", 1)[0] for k in keys if "." in k})  # Sections too.
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    if not close:  # The last part alone (`--config.total_step`, `--config.model.latnt_dim`).
        name = key.rsplit(".", 1)[-1]
        close = [k for k in keys if difflib.get_close_matches(name, [k.rsplit(".", 1)[-1]], 1, 0.8)]
    return f"; did you mean {' or '.join(close[:3])}?" if close else ""


def _parse(text: str, current):
    """A command-line string as the type of the value it replaces."""
    import ast

    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{text!r} is not a boolean")
        return text.lower() in ("true", "1")
    if isinstance(current, int):
        return int(text)
    if isinstance(current, float):
        return float(text)
    if isinstance(current, str):
        return text
    try:  # Tuples, lists, numbers, None.
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict) -> None:
    """Sets dotted keys (`{"data.name": "mnist", "eval_batch_size": "100"}`) in place; strings
    are parsed as the type of the value they replace. Unknown keys and bad values raise
    `UserError`."""
    from jvision.errors import UserError

    for key, value in overrides.items():
        *parents, name = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise UserError(f"unknown config key {key!r}{suggestions(key, config)}")
        try:
            node[name] = _parse(value, node[name]) if isinstance(value, str) else value
        except (TypeError, ValueError) as error:
            raise UserError(f"bad value {value!r} for config key {key!r}: {error}") from None


def from_saved(saved: dict) -> ml_collections.ConfigDict:
    """A config saved with a run (`config.json`, a checkpoint's `meta`), with the keys added to
    `base_config` since then filled in with their defaults."""
    config = ml_collections.ConfigDict(saved)

    def fill(node: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict) -> None:
        for key, value in defaults.items():
            if key not in node:
                node[key] = value
            elif isinstance(value, ml_collections.ConfigDict) and isinstance(
                node[key], ml_collections.ConfigDict
            ):
                fill(node[key], value)

    model = config.get("model")
    if model is not None and "matmul_dtype" in model:  # Its name before `model.dtype`.
        model.dtype = model.matmul_dtype
        del model["matmul_dtype"]
    fill(config, base_config())
    return config


MAX_SEED = 2**32 - 1


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the values every run uses, before anything is written; `UserError` names the first
    bad one and what is allowed."""
    import math

    from jvision.errors import UserError

    def check(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            raise UserError(f"{key}={_lookup(config, key)!r}: {allowed}")

    def integer(key: str) -> bool:
        value = _lookup(config, key)
        return isinstance(value, int) and not isinstance(value, bool)

    check(integer("seed") and 0 <= config.seed <= MAX_SEED, "seed", f"use 0 to {MAX_SEED}")
    check(integer("total_steps") and config.total_steps >= 0, "total_steps", "use 0 or more")
    for key in ("batch_size", "eval_batch_size", "keep_checkpoints"):
        check(integer(key) and config[key] > 0, key, "use 1 or more")
    for key in ("log_every_steps", "eval_every_steps", "ckpt_every_steps"):
        check(integer(key) and config[key] > 0, key, "use 1 or more (steps between actions)")
    for key in ("num_summary_images", "profile_steps", "profile_first_step"):
        check(integer(key) and config[key] >= 0, key, "use 0 or more")
    for key in ("learning_rate", "clip_norm"):
        value = config.optimizer.get(key, 0.0)
        check(
            isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
            f"optimizer.{key}",
            "use a finite value of 0 or more",
        )


def model_differences(saved: dict, current: dict) -> list[str]:
    """The `model.*` keys whose values differ between two model configs (as JSON)."""
    return sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k))


def settings_changes(saved: dict, current: dict) -> list[str]:
    """`key: old -> new` for every setting (outside `model`) that a resumed run changes."""
    old, new = (flatten({k: v for k, v in c.items() if k != "model"}) for c in (saved, current))
    return [
        f"{k}: {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k, "(absent)") != new.get(k, "(absent)")
    ]


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as `{"optimizer.learning_rate": value, ...}`."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _lookup(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        node = node[part]
    return node
