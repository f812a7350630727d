"""What config files build on: the keys every experiment has, and the `:arg` variants.

Every config file defines `get_config(arg: str | None = None)`; `arg` is the text after the colon in
`--config=configs/x.py:ARG`. Each accepts `tiny`, a run of seconds used by the tests. Loading a
config file is `jvision.config_files`; `--config.KEY=VALUE`, `jvision.config_overrides`; checking
the values, `jvision.config_checks`; a config saved with a run, `jvision.config_saved`.
"""

import ml_collections

KNOWN_ARGS = ("tiny",)
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("piecewise", "constant", "cosine", "linear", "rsqrt")
EMA_WEIGHTS = ("averaged", "live")
ACCUMULATION_LOOPS = ("auto", "scan", "unrolled")
WRITERS = ("tensorboard", "wandb")


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

    # The optimizer and its learning-rate schedule (jvision/optim.py says what each does).
    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adam"  # One of OPTIMIZERS: "adam" (coupled decay), "adamw", "sgd".
    config.optimizer.learning_rate = 1e-3  # The peak rate.
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.999
    config.optimizer.momentum = 0.0  # SGD's.
    config.optimizer.nesterov = False  # SGD's.
    config.optimizer.weight_decay = 0.0
    # >0: scale the gradient down to this global norm when it is larger, before weight decay
    # (as torch.nn.utils.clip_grad_norm_ before optimizer.step()); 0: no clipping.
    config.optimizer.clip_norm = 0.0
    config.optimizer.bias_lr_multiplier = 1.0  # The biases' updates scaled by this.
    config.optimizer.schedule = "piecewise"  # One of SCHEDULES.
    config.optimizer.warmup_steps = 0  # A linear warmup from 0 first (every schedule).
    # Piecewise-constant decay: multiply the rate by `decay_factor` at each of these steps.
    config.optimizer.decay_steps = ()
    config.optimizer.decay_factor = 0.1
    config.optimizer.end_learning_rate = 0.0  # Where "cosine" and "linear" end.
    config.optimizer.rsqrt_timescale = 10_000  # "rsqrt": rate · sqrt(τ / (τ + steps after warmup)).

    # Parameter EMA: the averaged weights, updated after every optimizer step as
    # decay · average + (1 − decay) · weights (0: off); evaluations, pictures and `predict` use
    # them ("averaged") or the weights being trained ("live").
    config.ema = ml_collections.ConfigDict()
    config.ema.decay = 0.0
    config.ema.evaluate = "averaged"

    # Gradient accumulation: each optimizer step sums the gradients of this many microbatches of
    # batch_size / grad_accum_steps examples (the same examples as one batch of batch_size).
    config.grad_accum_steps = 1
    # How the microbatches run: "scan" (a loop: one microbatch's memory), "unrolled" (no loop),
    # or "auto" ("unrolled" on CPUs, where convolutions' gradients in loops are slow).
    config.grad_accum_loop = "auto"
    # Where metrics and pictures go besides the log: any of WRITERS.
    config.writers = ("tensorboard",)

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
    # From a run with parameter EMA: its averaged parameters ("averaged") or its trained ones.
    config.init_from.weights = "averaged"

    # Evaluations: name -> {type: module in jvision.metrics, split}. Metric names are
    # prefixed with the evaluation's name, e.g. `test/nelbo_nats`.
    config.evals = ml_collections.ConfigDict()
    return config


def importance_sampled_nll(
    config: ml_collections.ConfigDict, num_samples: int, samples_per_pass: int, batch_size: int
) -> None:
    """Adds `test/nll_is_nats` (`jvision.metrics.importance_sampled_nll`) on the eval split,
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
    """The part every config's `tiny` variant shares: 4 steps of batch 16, evaluated on the first
    40 examples of each evaluation's split (importance sampling: 4 samples of the first 16),
    logging, evaluating and checkpointing every 2 steps. Call it after the config's splits are
    set."""
    config.total_steps = 4
    config.batch_size = 16
    config.eval_batch_size = 16
    config.log_every_steps = 2
    config.eval_every_steps = 2
    config.ckpt_every_steps = 2
    config.num_summary_images = 8
    config.data.eval_split = f"{_whole(config.data.eval_split)}[:40]"
    for eval_config in config.evals.values():
        eval_config.split = f"{_whole(eval_config.split)}[:40]"
        if "num_samples" in eval_config:
            split = f"{_whole(eval_config.split)}[:16]"
            eval_config.update(split=split, num_samples=4, samples_per_pass=2, batch_size=8)


def _whole(split: str) -> str:
    """The split a TFDS split expression slices (`"test[:40]"` -> `"test"`)."""
    return split.split("[")[0]
