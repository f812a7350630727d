"""DRAW with attention on MNIST: the paper's model (Gregor et al. 2015, Table 3 configuration).

64 glimpses, encoder/decoder LSTMs of 256 units, z of 100 per glimpse, 2×2 read and 5×5 write
attention, Bernoulli likelihood on dynamically binarized digits. Reports `test/nelbo_nats`, the
negative ELBO (L^x + L^z) in nats per test image, the paper's bound on the NLL (the paper: ≤ 80.97
nats on full binarized MNIST after long training).

Command:
    python -m jvision.main --config=configs/draw_mnist.py --workdir=workdirs/draw_mnist

Variants: `--config.model.use_attention=False` (read the whole image, write the whole canvas);
`configs/draw_mnist_small.py` (pytlib-sized); `configs/draw_mnist_clip.py` (gradient clipping,
longer); `configs/draw_full_mnist.py` (full MNIST, the paper's data). The 2,000 steps here are a
CPU-sized start: the read window begins spread over the image borders (δ̃ = 1 at initialisation)
and takes ~1,000 steps to find the digits; raise `total_steps` for the paper's regime.

Speed option: `--config.model.dtype=bfloat16` rounds the dense layers' matmul operands to
bfloat16 (float32 accumulation and results, forward and backward; `jvision/ops/precision.py`),
what a TPU does by default.

Results: docs/results.md (the quick start; "Do the papers' claims hold on the embedded digits?");
step times: docs/speed.md.
"""

from jvision import config_lib


def get_config(arg: str | None = None):
    variant = config_lib.parse_arg(arg)
    config = config_lib.base_config()
    config.total_steps = 2000
    config.batch_size = 64
    config.eval_batch_size = 200
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.ckpt_every_steps = 500
    config.num_summary_images = 64
    config.optimizer.learning_rate = 1e-3

    config.model.name = "draw"
    config.model.image_shape = (28, 28, 1)
    config.model.num_glimpses = 64
    config.model.hidden_size = 256
    config.model.latent_size = 100
    config.model.read_size = 2
    config.model.write_size = 5
    config.model.use_attention = True

    config.evals.test = dict(type="mean_metrics", split=config.data.eval_split)
    # test/nll_is_nats at the end: K = 100 samples per test digit (~100 s on the 2-core CPU).
    config_lib.importance_sampled_nll(config, num_samples=100, samples_per_pass=25, batch_size=16)

    if variant == "tiny":
        shrink_for_tests(config)
    return config


def shrink_for_tests(config):
    """A run of seconds: a few steps of a small DRAW on 40 test digits."""
    config_lib.shrink_for_tests(config)
    config.model.num_glimpses = 3
    config.model.hidden_size = 16
    config.model.latent_size = 4
