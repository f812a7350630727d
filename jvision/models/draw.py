"""DRAW: a recurrent VAE that draws with Gaussian attention (Gregor et al., ICML 2015).

Faithful to the paper, not to pytlib's port (whose tanh RNN, integer constants, shared attention
head and swapped γ/δ in write are not copied):

- encoder and decoder LSTMs; per glimpse t (eqs. 3-8):
      x̂ = x - σ(c_{t-1});  r = read(x, x̂, h^dec_{t-1});  h^enc_t = LSTM^enc([r, h^dec_{t-1}])
      z_t ~ N(μ(h^enc_t), σ(h^enc_t));  h^dec_t = LSTM^dec(z_t);  c_t = c_{t-1} + write(h^dec_t)
- the canvas c is accumulated in logit space; D(x | c_T) is Bernoulli(σ(c_T));
- read and write each have their own attention parameters, a linear map of the decoder state
  (read from h^dec_{t-1}, write from h^dec_t); the attention maths is `jvision.ops.attention`;
- loss per image = L^x + L^z = Σ_pixels BCE(σ(c_T), x) + Σ_t KL(q(z_t | ·) || N(0, I)), in nats;
- without attention, read sees the whole image and error image and write emits a whole canvas.

Initial states (canvas, LSTM states) are zeros. The glimpse loop is a `lax.scan`, so compile time
does not grow with the number of glimpses.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jvision import summaries
from jvision.errors import UserError
from jvision.models import _variational
from jvision.ops import attention, distributions, precision

READ_COLOR = (0.1, 0.9, 0.1)
WRITE_COLOR = (0.95, 0.15, 0.1)
MAX_SUMMARY_STEPS = 16  # Columns of the drawing-sequence grids.
MAX_SUMMARY_ROWS = 8


class LSTM(nnx.Module):
    """An LSTM cell whose four gates come from one matmul on [input, h]."""

    def __init__(self, in_features: int, hidden_size: int, *, rngs: nnx.Rngs, **linear_kwargs):
        self.gates = nnx.Linear(
            in_features + hidden_size, 4 * hidden_size, rngs=rngs, **linear_kwargs
        )

    def __call__(self, state: tuple[jax.Array, jax.Array], inputs: jax.Array):
        hidden, cell = state
        i, f, g, o = jnp.split(self.gates(jnp.concatenate([inputs, hidden], -1)), 4, axis=-1)
        cell = jax.nn.sigmoid(f) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
        return jax.nn.sigmoid(o) * jnp.tanh(cell), cell


class DRAW(nnx.Module):
    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_glimpses: int,
        hidden_size: int,
        latent_size: int,
        read_size: int,
        write_size: int,
        use_attention: bool,
        dtype: str = precision.FLOAT32,
        *,
        rngs: nnx.Rngs,
    ):
        self.image_shape = tuple(image_shape)
        self.num_glimpses = num_glimpses
        self.hidden_size = hidden_size
        self.latent_size = latent_size
        self.read_size = read_size
        self.write_size = write_size
        self.use_attention = use_attention
        height, width, channels = self.image_shape
        dot_general = precision.dot_general(dtype)
        dense = functools.partial(nnx.Linear, dot_general=dot_general)
        if use_attention:
            read_features = 2 * read_size * read_size * channels
            write_features = write_size * write_size * channels
            self.read_window = dense(hidden_size, attention.NUM_RAW_PARAMS, rngs=rngs)
            self.write_window = dense(hidden_size, attention.NUM_RAW_PARAMS, rngs=rngs)
        else:
            read_features = 2 * height * width * channels
            write_features = height * width * channels
        lstm = functools.partial(LSTM, dot_general=dot_general)
        self.encoder = lstm(read_features + hidden_size, hidden_size, rngs=rngs)
        self.posterior = dense(hidden_size, 2 * latent_size, rngs=rngs)
        self.decoder = lstm(latent_size, hidden_size, rngs=rngs)
        self.write_content = dense(hidden_size, write_features, rngs=rngs)

    def _window(self, head: nnx.Linear, h_dec: jax.Array, grid_size: int) -> attention.Window:
        height, width, _ = self.image_shape
        return attention.window_from_raw(head(h_dec), height, width, grid_size)

    def read(self, images: jax.Array, errors: jax.Array, h_dec: jax.Array):
        """Returns read features [B, F] and the window's box [B, 4] (None without attention)."""
        both = jnp.concatenate([images, errors], axis=-1)
        if not self.use_attention:
            return both.reshape(both.shape[0], -1), None
        height, width, _ = self.image_shape
        window = self._window(self.read_window, h_dec, self.read_size)
        f_y, f_x = attention.filterbanks(window, self.read_size, height, width)
        glimpse = attention.read_glimpse(both, f_y, f_x, window.intensity)
        return glimpse.reshape(glimpse.shape[0], -1), attention.window_box(window, self.read_size)

    def write(self, h_dec: jax.Array):
        """Returns the canvas update [B, H, W, C] and the window's box [B, 4] (or None)."""
        batch = h_dec.shape[0]
        height, width, channels = self.image_shape
        content = self.write_content(h_dec)
        if not self.use_attention:
            return content.reshape(batch, height, width, channels), None
        window = self._window(self.write_window, h_dec, self.write_size)
        f_y, f_x = attention.filterbanks(window, self.write_size, height, width)
        patch = content.reshape(batch, self.write_size, self.write_size, channels)
        update = attention.write_patch(patch, f_y, f_x, window.intensity)
        return update, attention.window_box(window, self.write_size)

    def _zero_state(self, batch: int):
        zeros = jnp.zeros((batch, self.hidden_size))
        return zeros, zeros

    def glimpse(self, carry, images: jax.Array, noise: jax.Array):
        """One step of inference and drawing; `noise` [B, Z] is the reparameterisation ε."""
        canvas, encoder_state, decoder_state = carry
        errors = images - jax.nn.sigmoid(canvas)
        read_features, read_box = self.read(images, errors, decoder_state[0])
        encoder_state = self.encoder(
            encoder_state, jnp.concatenate([read_features, decoder_state[0]], -1)
        )
        mean, logvar = jnp.split(self.posterior(encoder_state[0]), 2, axis=-1)
        z = mean + jnp.exp(0.5 * logvar) * noise
        decoder_state = self.decoder(decoder_state, z)
        update, write_box = self.write(decoder_state[0])
        canvas = canvas + update
        step = {
            "kl_nats": distributions.gaussian_kl_standard_normal(mean, logvar),
            # log q(z_t | ·) − log p(z_t) at the sample: the importance weight's latent part.
            "log_ratio": distributions.gaussian_log_density(z, mean, logvar)
            - distributions.gaussian_log_density(z, 0.0, 0.0),
            "canvas": canvas,
            "read_box": read_box,
            "write_box": write_box,
        }
        return (canvas, encoder_state, decoder_state), step

    def __call__(self, images: jax.Array, noise: jax.Array, record: bool = False):
        """Reconstructs images [B, H, W, C] in `num_glimpses` steps; noise is [T, B, Z].

        Returns the final canvas logits [B, H, W, C] and per-step outputs stacked over T:
        `kl_nats` and `log_ratio` (log q(z_t | ·) − log p(z_t) at the sample) [T, B], and with
        `record` also `canvas` logits and the attention boxes.
        """
        batch = images.shape[0]
        init = (jnp.zeros(images.shape), self._zero_state(batch), self._zero_state(batch))

        def step(carry, noise_t):
            carry, outputs = self.glimpse(carry, images, noise_t)
            kept = outputs if record else {k: outputs[k] for k in ("kl_nats", "log_ratio")}
            return carry, kept

        # Keep only the matmul results of each glimpse for the backward pass and recompute the
        # cheap rest: stacking every intermediate over 64 glimpses costs more memory traffic than
        # recomputing it (draw_mnist: 315 -> 259 ms per train step on a 2-core CPU).
        step = jax.checkpoint(step, prevent_cse=False, policy=jax.checkpoint_policies.dots_saveable)
        (canvas, _, _), steps = jax.lax.scan(step, init, noise)
        return canvas, steps

    def generate(self, noise: jax.Array):
        """Draws from the prior: noise [T, B, Z] are the z_t ~ N(0, I).

        Returns per-step canvas logits [T, B, H, W, C] and write boxes [T, B, 4] (or None).
        """
        batch = noise.shape[1]

        def step(carry, z):
            canvas, decoder_state = carry
            decoder_state = self.decoder(decoder_state, z)
            update, write_box = self.write(decoder_state[0])
            canvas = canvas + update
            return (canvas, decoder_state), (canvas, write_box)

        init = (jnp.zeros((batch, *self.image_shape)), self._zero_state(batch))
        _, (canvases, write_boxes) = jax.lax.scan(step, init, noise)
        return canvases, write_boxes

    def noise(self, key: jax.Array, batch: int) -> jax.Array:
        return jax.random.normal(key, (self.num_glimpses, batch, self.latent_size))


def build(config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> DRAW:
    if config.num_glimpses < 1:  # A canvas drawn in no steps: nothing to train or show.
        raise UserError(f"model.num_glimpses={config.num_glimpses}: use 1 or more")
    return DRAW(
        image_shape=tuple(config.image_shape),
        num_glimpses=config.num_glimpses,
        hidden_size=config.hidden_size,
        latent_size=config.latent_size,
        read_size=config.read_size,
        write_size=config.write_size,
        use_attention=config.use_attention,
        dtype=config.dtype,
        rngs=rngs,
    )


def _per_example_terms(model: DRAW, batch, key) -> dict[str, jax.Array]:
    images = batch["image"]
    canvas, steps = model(images, model.noise(key, images.shape[0]))
    recon = distributions.bernoulli_nll(canvas, images)
    kl = steps["kl_nats"].sum(axis=0)
    return {"nelbo_nats": recon + kl, "recon_nats": recon, "kl_nats": kl}


train_loss, eval_metrics = _variational.nelbo_objective(_per_example_terms)


def log_importance_weights(config, model: DRAW, batch, key, step, num_samples: int) -> jax.Array:
    """[B, K] log p(x, z_k) − log q(z_k | x) for K = `num_samples` posterior samples, each a
    whole drawing sequence z_{1:T} (q is sequential: z_t depends on the earlier samples)."""
    del config, step
    images = batch["image"]
    tiled = jnp.broadcast_to(images, (num_samples, *images.shape)).reshape(-1, *images.shape[1:])
    canvas, steps = model(tiled, model.noise(key, tiled.shape[0]))
    log_weights = -distributions.bernoulli_nll(canvas, tiled) - steps["log_ratio"].sum(axis=0)
    return log_weights.reshape(num_samples, images.shape[0]).T


def _batch_major(per_step):
    """[T, B, ...] -> [B, T, ...]; None (no attention window) stays None."""
    return None if per_step is None else jnp.swapaxes(per_step, 0, 1)


def predict(config, model: DRAW, batch, step):
    """The drawing of each image with every z_t at its posterior mean (no sampling noise):
    `canvases` [B, T, H, W, C] (Bernoulli means after each glimpse) and the attention windows
    `read_boxes`, `write_boxes` [B, T, 4] (ymin, xmin, ymax, xmax in pixels; None without
    attention)."""
    del config, step
    images = batch["image"]
    noise = jnp.zeros((model.num_glimpses, images.shape[0], model.latent_size))
    _, recorded = model(images, noise, record=True)
    return {
        "canvases": _batch_major(jax.nn.sigmoid(recorded["canvas"])),
        "read_boxes": _batch_major(recorded["read_box"]),
        "write_boxes": _batch_major(recorded["write_box"]),
    }


def _shown_steps(num_glimpses: int) -> np.ndarray:
    """Up to MAX_SUMMARY_STEPS glimpse indices, evenly spaced, always including the last."""
    count = min(num_glimpses, MAX_SUMMARY_STEPS)
    return np.unique(np.linspace(0, num_glimpses - 1, count).round().astype(int))


def _pick(per_step, steps, rows):
    return None if per_step is None else per_step[steps, :rows]


def image_summaries(config, model: DRAW, batch, key, step):
    """The numbers behind the drawing sequences (the paper's Figures 1 and 7), at up to 16 evenly
    spaced glimpses: canvases of prior samples with their write windows, canvases of test images
    with their read and write windows, and final prior samples."""
    del config, step
    images = batch["image"]
    rows = min(MAX_SUMMARY_ROWS, images.shape[0])
    steps = _shown_steps(model.num_glimpses)
    generate_key, reconstruct_key = jax.random.split(key)
    canvases, write_boxes = model.generate(model.noise(generate_key, images.shape[0]))
    _, recorded = model(images[:rows], model.noise(reconstruct_key, rows), record=True)
    return {
        "generation": jax.nn.sigmoid(canvases[steps, :rows]),
        "generation_write_boxes": _pick(write_boxes, steps, rows),
        "samples": jax.nn.sigmoid(canvases[-1]),
        "inputs": images[:rows],
        "reconstruction": jax.nn.sigmoid(recorded["canvas"][steps]),
        "read_boxes": _pick(recorded["read_box"], steps, rows),
        "write_boxes": _pick(recorded["write_box"], steps, rows),
    }


def _sequence_grid(frames: np.ndarray, boxes_and_colors) -> np.ndarray:
    """Frames [S, N, H, W, C] -> grid [N, S, H, W, 3] with each frame's boxes [S, N, 4] drawn."""
    frames = summaries.to_rgb(frames)
    shown, rows = frames.shape[:2]
    flat = frames.reshape(shown * rows, *frames.shape[2:])
    for boxes, color in boxes_and_colors:
        if boxes is not None:
            flat = summaries.draw_rectangles(flat, boxes.reshape(-1, 4), color)
    return flat.reshape(shown, rows, *flat.shape[1:]).swapaxes(0, 1)


def draw_summaries(config, outputs):
    """- `generation`: rows are samples from the prior, columns glimpses; write windows in red.
    - `reconstruction`: rows are test images (first column), then the canvas after each shown
      glimpse with the read window (green) and write window (red) of that glimpse.
    - `samples`: final canvases of prior samples, 16 per row."""
    del config
    generation = _sequence_grid(
        outputs["generation"], [(outputs["generation_write_boxes"], WRITE_COLOR)]
    )
    sequence = _sequence_grid(
        outputs["reconstruction"],
        [(outputs["read_boxes"], READ_COLOR), (outputs["write_boxes"], WRITE_COLOR)],
    )
    inputs = summaries.to_rgb(outputs["inputs"])[:, None]
    return {
        "generation": generation,
        "reconstruction": np.concatenate([inputs, sequence], axis=1),
        "samples": summaries.as_rows(outputs["samples"], 16),
    }
