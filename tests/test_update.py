"""One optimizer update (`jvision.update`): gradient accumulation against one large batch, per
microbatch BatchNorm statistics, parameter EMA against its closed form, and resume with both."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import float64, load_config, to_float64

from jvision import config_lib, evaluate, models, sharding, train, update
from jvision.data import on_device
from jvision.safety import files, reader


class Linear(nnx.Module):
    """A deterministic model without BatchNorm: a least-squares fit."""

    def __init__(self, rngs: nnx.Rngs):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (4, 3)))
        self.bias = nnx.Param(jnp.zeros(3))


class Normalised(nnx.Module):
    """A BatchNorm on the inputs (PyTorch's momentum, 0.1), then the least-squares fit."""

    def __init__(self, rngs: nnx.Rngs):
        self.norm = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (4, 3)))


def _toy_family(model_class) -> models.Family:
    def train_loss(model, batch, key, step):
        del key, step
        x = model.norm(batch["x"]) if hasattr(model, "norm") else batch["x"]
        bias = model.bias[...] if hasattr(model, "bias") else 0.0
        error = x @ model.weight[...] + bias - batch["y"]
        loss = jnp.mean(jnp.sum(error**2, axis=-1))
        return loss, {"mean_abs_error": jnp.mean(jnp.abs(error))}

    return models.Family(
        name="toy",
        build=lambda rngs: model_class(rngs),
        train_loss=train_loss,
        predict=None,
        image_summaries=None,
        draw_summaries=None,
        trainable=lambda model: nnx.Param,
    )


def _config(accumulate: int, fsdp: int = 1, loop: str = "auto"):
    config = config_lib.base_config()
    config.grad_accum_loop = loop
    config.model.name = "toy"
    config.batch_size = 64
    config.total_steps = 10
    config.grad_accum_steps = accumulate
    config.mesh.fsdp, config.mesh.fsdp_min_size = fsdp, 1  # Every array sharded over fsdp.
    return config


def _batch(dtype):
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(16, 4)).astype(dtype),
        "y": rng.normal(size=(16, 3)).astype(dtype),
    }


def _one_step(config, family, batch):
    """The state after one update of the trainer's jitted step, on the 8 devices."""
    mesh = sharding.make_mesh(config.mesh)
    layout, state = update.create_state(config, family, mesh)
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    data = on_device.Input(iter([]), {}, on_device.as_given, spec, "host")
    step, metrics_class = update.make_train_step(config, family, layout, mesh, data)
    metrics = jax.device_put(metrics_class.empty(), sharding.replicated(mesh))
    inputs = sharding.global_batch(mesh, batch)
    state, metrics = step(state, metrics, {}, inputs, jnp.int32(0))
    return jax.device_get(state), {k: float(v) for k, v in metrics.compute().items()}


@pytest.mark.parametrize(
    "fsdp, loop",
    [(1, "scan"), (2, "scan"), (2, "unrolled")],
    ids=["data parallel, scan", "fsdp, scan", "fsdp, unrolled"],
)
def test_accumulated_microbatches_give_the_large_batch_update(fsdp, loop):
    """k = 4 microbatches of 16 against one batch of 64 (a mean-squared loss, no noise, no
    BatchNorm), on 8 devices: in float64 the losses, gradients' norm and Adam's updated
    parameters agree to rounding (the same sums in another order: ≲ 64·2⁻⁵³ relative, Adam's
    first step divides by the same |g|); RTOL = 1e-12. A microbatch counted twice or dropped
    moves the loss by ~10%."""
    family = _toy_family(Linear)
    with float64():
        batch = _batch(np.float64)
        results = [_one_step(_config(k, fsdp, loop), family, batch) for k in (1, 4)]
        (one, one_metrics), (four, four_metrics) = results
    assert one_metrics.keys() == four_metrics.keys() == {"loss", "mean_abs_error", "grad_norm"}
    for name in one_metrics:
        assert four_metrics[name] == pytest.approx(one_metrics[name], rel=1e-12)
    for a, b in zip(jax.tree.leaves(one["model"]), jax.tree.leaves(four["model"]), strict=True):
        assert a.dtype == np.float64
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)


def test_in_float32_the_accumulated_loss_is_the_large_batch_loss_to_rounding():
    """The same in float32: a mean of 64 sums of 3 squares, regrouped as 4 means of 16, differs
    by ≤ ~70 roundings of the (non-negative) terms' sum, 70·2⁻²⁴ ≈ 4e-6 relative."""
    family = _toy_family(Linear)
    batch = _batch(np.float32)
    (_, one), (_, four) = (_one_step(_config(k), family, batch) for k in (1, 4))
    assert four["loss"] == pytest.approx(one["loss"], rel=70 * 2.0**-24)


@pytest.mark.parametrize("loop", ["scan", "unrolled"])
def test_batchnorm_takes_one_update_of_its_statistics_per_microbatch(loop):
    """Each microbatch is normalised by its own statistics, and the running mean takes one
    update per microbatch: with k = 2 and momentum 0.1, m = 0.9·(0.1·μ₀) + 0.1·μ₁, μⱼ the mean
    of rows j, j + 2, … (not 0.1·μ of the whole batch)."""
    family = _toy_family(Normalised)
    with float64():
        batch = _batch(np.float64)
        state, _ = _one_step(_config(2, loop=loop), family, batch)
    x = batch["x"]
    expected = 0.9 * (0.1 * x[0::2].mean(0)) + 0.1 * x[1::2].mean(0)
    running = nnx.to_pure_dict(state["model"])["norm"]["mean"]
    # Flax keeps the statistics in float32 whatever the model's dtype: two updates of numbers
    # ≤ M = max |μⱼ|, each ≤ 2 roundings: |error| ≤ 4·2⁻²⁴·M.
    largest = max(np.abs(x[0::2].mean(0)).max(), np.abs(x[1::2].mean(0)).max())
    np.testing.assert_allclose(running, expected, rtol=0, atol=4 * 2.0**-24 * largest)
    assert not np.allclose(running, 0.1 * x.mean(0), rtol=1e-3)


def test_a_batch_that_microbatches_cannot_split_over_the_devices_is_refused():
    from jvision.errors import UserError

    config, family = _config(4), _toy_family(Linear)
    config.batch_size = 24  # 4 microbatches of 6: not a multiple of the 8 devices.
    mesh = sharding.make_mesh(config.mesh)
    layout, _ = update.create_state(config, family, mesh)
    with pytest.raises(UserError, match="24 is not divisible by grad_accum_steps 4 × 8 devices"):
        update.make_train_step(config, family, layout, mesh, data=None)


def _tiny(**overrides):
    config = load_config("vae_mnist", "tiny")
    for key, value in overrides.items():
        node = config
        *parents, name = key.split(".")
        for part in parents:
            node = node[part]
        node[name] = value
    return config


def test_resuming_with_accumulation_and_ema_is_bit_identical(tmp_path):
    """2 steps, then resumed to 4, against 4 unbroken: the same parameters, averages and
    results (the microbatches' keys and the average are part of the state and the step)."""
    settings = {"grad_accum_steps": 2, "ema.decay": 0.5, "optimizer.schedule": "cosine"}
    settings["optimizer.warmup_steps"] = 2
    train.train_and_evaluate(_tiny(**settings), str(tmp_path / "straight"))
    train.train_and_evaluate(_tiny(**settings, total_steps=2), str(tmp_path / "broken"))
    train.train_and_evaluate(_tiny(**settings), str(tmp_path / "broken"))
    for weights in ("averaged", "live"):
        a, _ = reader.read_arrays(tmp_path / "straight", weights=weights)
        b, _ = reader.read_arrays(tmp_path / "broken", weights=weights)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(x, y)
    results = [
        json.loads((tmp_path / d / "results.json").read_text()) for d in ("straight", "broken")
    ]
    assert results[0] == results[1]


def test_the_average_is_the_closed_form_weighted_sum_and_what_is_evaluated(tmp_path):
    """With decay d the average after T updates is d^T·p₀ + Σₜ (1 − d)·d^(T−t)·pₜ, pₜ the
    parameters after update t (read from a checkpoint at every step). The trainer computes the
    recurrence in float32: ≤ 2 roundings per update of numbers ≤ M (the largest |pₜ|), so
    |error| ≤ 2·T·2⁻²⁴·M; the bound used is 4·T·2⁻²⁴·M. Evaluations, `results.json` and
    `evaluate.load` use the average; `weights="live"` the trained parameters."""
    decay, total = 0.5, 4
    workdir = tmp_path / "run"
    settings = {"ema.decay": decay, "ckpt_every_steps": 1, "keep_checkpoints": 10}
    train.train_and_evaluate(_tiny(**settings, total_steps=0), str(workdir))  # Saves step 0.
    train.train_and_evaluate(_tiny(**settings, total_steps=total), str(workdir))
    live = [to_float64(reader.read_arrays(workdir, t, weights="live")[0]) for t in range(5)]
    averaged, _ = reader.read_arrays(workdir, total)
    expected = jax.tree.map(lambda p: decay**total * p, live[0])
    for t in range(1, total + 1):
        expected = jax.tree.map(
            lambda e, p, t=t: e + (1 - decay) * decay ** (total - t) * p, expected, live[t]
        )
    compared = 0
    for path, value in jax.tree_util.tree_flatten_with_path(averaged)[0]:
        if getattr(path[-1], "key", None) in ("mean", "var"):  # BatchNorm statistics: the
            np.testing.assert_array_equal(value, _at(live[total], path))  # trained model's.
            continue
        largest = max(np.abs(_at(p, path)).max() for p in live)
        bound = 4 * total * 2.0**-24 * largest
        np.testing.assert_allclose(value, _at(expected, path), rtol=0, atol=bound)
        compared += 1
    assert compared >= 8
    results = json.loads((workdir / "results.json").read_text())["metrics"]
    assert evaluate.load(workdir).evaluate() == results
    assert evaluate.load(workdir, weights="live").evaluate() != results


def _at(tree, path):
    for key in path:
        tree = tree[getattr(key, "key", key)]
    return tree


def test_the_averaged_model_keeps_the_trained_batchnorm_statistics():
    """Only parameters are averaged: the averaged model's BatchNorm statistics (and any other
    non-parameter state) are the trained model's."""
    config = _tiny(**{"ema.decay": 0.9})
    family = models.get(config.model)
    _, state = update.create_state(config, family, sharding.make_mesh(config.mesh))
    state["ema"] = jax.tree.map(jnp.zeros_like, state["ema"])
    averaged = update.averaged_model_state(state, "averaged")
    trained = update.averaged_model_state(state, "live")
    assert trained is state["model"]
    for kind, expect_zero in ((nnx.Param, True), (nnx.BatchStat, False)):
        for a, b in zip(
            jax.tree.leaves(nnx.filter_state(averaged, kind)),
            jax.tree.leaves(nnx.filter_state(state["model"], kind)),
            strict=True,
        ):
            if expect_zero:
                assert not np.asarray(a).any()
            else:
                np.testing.assert_array_equal(a, b)


def test_a_resume_that_turns_ema_on_or_off_is_refused(tmp_path, trained):
    """The checkpoint holds averaged parameters or not: another `ema.decay` on/off would leave
    the average undefined. (Another non-zero decay is a changed setting, logged.)"""
    import shutil

    from jvision.errors import UserError

    shutil.copytree(trained("vae_mnist").workdir, tmp_path / "run")
    with pytest.raises(UserError, match="written without parameter EMA"):
        train.train_and_evaluate(_tiny(**{"ema.decay": 0.9}, total_steps=6), str(tmp_path / "run"))
    assert files.finished_step(files.path(tmp_path / "run")) == 4
