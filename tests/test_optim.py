"""The optimizers of `jvision.optim` against hand-written updates in the conventions of
torch.optim (coupled weight decay, momentum from the first gradient, clipping before decay), in
float64 on both sides: agreement to rounding (1e-12 relative)."""

import ml_collections
import numpy as np
import pytest
from helpers import float64

from jvision import optim

RTOL = 1e-12


def _settings(**values):
    defaults = {"name": "adam", "decay_steps": (), "decay_factor": 0.1, "weight_decay": 0.0}
    return ml_collections.ConfigDict({**defaults, **values})


def test_adam_with_coupled_decay_a_rate_schedule_and_a_bias_rate():
    settings = _settings(
        name="adam",
        learning_rate=0.1,
        b1=0.9,
        b2=0.999,
        weight_decay=0.01,
        decay_steps=(2,),
        decay_factor=0.5,
        bias_lr_multiplier=2.0,
    )
    with float64():
        params = {"kernel": np.array([1.0, -2.0]), "bias": np.array([0.5])}
        transform = optim.make(settings, total_steps=100)
        state = transform.init(params)
        expected = {k: v.copy() for k, v in params.items()}
        moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
        rng = np.random.default_rng(0)
        for step in range(4):
            grads = {k: rng.normal(size=v.shape) for k, v in params.items()}
            updates, state = transform.update(grads, state, params)
            params = {k: params[k] + np.asarray(updates[k]) for k in params}
            rate = 0.1 * (0.5 if step >= 2 else 1.0)  # Halved from step 2 on.
            for k in expected:  # torch.optim.Adam: decay added to the gradient, then Adam.
                g = grads[k] + 0.01 * expected[k]
                m, v = moments[k]
                m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
                moments[k] = (m, v)
                m_hat, v_hat = m / (1 - 0.9 ** (step + 1)), v / (1 - 0.999 ** (step + 1))
                scale = 2.0 if k == "bias" else 1.0
                expected[k] = expected[k] - scale * rate * m_hat / (np.sqrt(v_hat) + 1e-8)
            for k in params:
                np.testing.assert_allclose(params[k], expected[k], rtol=RTOL)


def test_sgd_with_momentum_matches_torch_conventions():
    settings = _settings(name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.1)
    with float64():
        params = {"w": np.array([1.0])}
        transform = optim.make(settings, total_steps=100)
        state = transform.init(params)
        expected, velocity = 1.0, 0.0
        for grad in (0.5, -0.25, 1.0):
            updates, state = transform.update({"w": np.array([grad])}, state, params)
            params = {"w": params["w"] + np.asarray(updates["w"])}
            velocity = 0.9 * velocity + (grad + 0.1 * expected)  # torch.optim.SGD(dampening=0).
            expected -= 0.1 * velocity
            np.testing.assert_allclose(params["w"], [expected], rtol=RTOL)


def test_clipping_scales_the_gradient_to_the_global_norm_before_decay():
    settings = _settings(name="sgd", learning_rate=1.0, weight_decay=0.5, clip_norm=2.0)
    with float64():
        params = {"a": np.array([1.0, 0.0]), "b": np.array([2.0])}
        transform = optim.make(settings, total_steps=100)
        state = transform.init(params)
        large = {"a": np.array([3.0, 0.0]), "b": np.array([4.0])}
        small = {"a": np.zeros(2), "b": np.array([1.0])}
        for grads in (large, small):
            norm = np.sqrt(sum(np.sum(np.square(g)) for g in grads.values()))
            factor = min(1.0, 2.0 / norm)  # |g| = 5 → scaled to 2; |g| = 1 → unchanged.
            updates, state = transform.update(grads, state, params)
            for k in params:  # torch: clip_grad_norm_, then SGD adds the decay.
                expected = -(factor * np.asarray(grads[k]) + 0.5 * params[k])
                np.testing.assert_allclose(np.asarray(updates[k]), expected, rtol=RTOL)


def test_piecewise_constant_rate():
    schedule = optim.learning_rate_schedule(
        _settings(learning_rate=1.0, decay_steps=(3, 5), decay_factor=0.1), total_steps=7
    )
    rates = [float(schedule(step)) for step in range(7)]
    np.testing.assert_allclose(rates, [1, 1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def _closed_form(kind: str, t: int, peak=0.5, end=0.05, warmup=10, total=110, timescale=20.0):
    """The schedules of `jvision.optim`'s docstring, written out: linear warmup from 0, then
    (t' = t − warmup, n = total − warmup) the schedule's own formula."""
    if t < warmup:
        return peak * t / warmup
    t, n = t - warmup, total - warmup
    return {
        "constant": peak,
        "cosine": end + (peak - end) * 0.5 * (1 + np.cos(np.pi * min(t, n) / n)),
        "linear": peak + (end - peak) * min(t, n) / n,
        "rsqrt": peak * np.sqrt(timescale / (timescale + t)),
        "piecewise": peak * (0.1 if t + warmup >= 60 else 1.0),
    }[kind]


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear", "rsqrt", "piecewise"])
def test_schedules_with_warmup_equal_their_closed_form(kind):
    """Values at chosen steps (the warmup, its end, inside and at the end of the decay, past the
    end), in float64: agreement to rounding."""
    settings = _settings(
        learning_rate=0.5,
        schedule=kind,
        warmup_steps=10,
        end_learning_rate=0.05,
        rsqrt_timescale=20.0,
        decay_steps=(60,),
    )
    with float64():
        schedule = optim.learning_rate_schedule(settings, total_steps=110)
        for t in (0, 1, 5, 9, 10, 11, 37, 59, 60, 109, 110, 150):
            assert float(schedule(t)) == pytest.approx(_closed_form(kind, t), rel=RTOL, abs=1e-15)


@pytest.mark.parametrize("timescale", [10.0, 4.0])
def test_rsqrt_is_finite_when_the_warmup_reaches_its_timescale(timescale):
    """join_schedules evaluates the rsqrt part during the warmup too, at negative counts: with a
    warmup as long as the timescale (or longer) that once divided by zero at step 0."""
    settings = _settings(
        learning_rate=0.5, schedule="rsqrt", warmup_steps=10, rsqrt_timescale=timescale
    )
    with float64():
        schedule = optim.learning_rate_schedule(settings, total_steps=110)
        for t in range(0, 30):
            want = _closed_form("rsqrt", t, timescale=timescale)
            assert float(schedule(t)) == pytest.approx(want, rel=RTOL, abs=1e-15), t


def test_adamw_is_optax_adamw():
    """`adamw` is optax's, decoupled decay included: the same updates from the same gradients
    (after the same clipping)."""
    import optax

    settings = _settings(
        name="adamw", learning_rate=0.01, b1=0.8, b2=0.99, weight_decay=0.3, clip_norm=1.0
    )
    with float64():
        params = {"w": np.array([1.0, -2.0, 3.0])}
        ours = optim.make(settings, total_steps=10)
        reference = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(0.01, b1=0.8, b2=0.99, weight_decay=0.3),
        )
        states = ours.init(params), reference.init(params)
        rng = np.random.default_rng(1)
        for _ in range(4):
            grads = {"w": rng.normal(size=3)}
            (a, state_a), (b, state_b) = (
                t.update(grads, s, params) for t, s in zip((ours, reference), states, strict=True)
            )
            states = state_a, state_b
            np.testing.assert_array_equal(np.asarray(a["w"]), np.asarray(b["w"]))
            params = {"w": params["w"] + np.asarray(a["w"])}
    # Decoupled: a zero gradient still shrinks the weights by rate · decay · w.
    with float64():
        transform = optim.make(
            _settings(name="adamw", learning_rate=0.1, weight_decay=0.5, b1=0.9, b2=0.999), 10
        )
        zero = {"w": np.zeros(3)}
        updates, _ = transform.update(zero, transform.init(params), params)
        np.testing.assert_allclose(np.asarray(updates["w"]), -0.1 * 0.5 * params["w"], rtol=RTOL)


def test_sgd_with_nesterov_momentum_matches_torch():
    """torch.optim.SGD(nesterov=True): v ← μv + g; step g + μv."""
    settings = _settings(name="sgd", learning_rate=0.1, momentum=0.9, nesterov=True)
    with float64():
        params = {"w": np.array([1.0])}
        transform = optim.make(settings, total_steps=100)
        state = transform.init(params)
        expected, velocity = 1.0, 0.0
        for grad in (0.5, -0.25, 1.0):
            updates, state = transform.update({"w": np.array([grad])}, state, params)
            params = {"w": params["w"] + np.asarray(updates["w"])}
            velocity = 0.9 * velocity + grad
            expected -= 0.1 * (grad + 0.9 * velocity)
            np.testing.assert_allclose(params["w"], [expected], rtol=RTOL)


def test_unknown_optimizer_is_a_user_error():
    from jvision.errors import UserError

    with pytest.raises(UserError, match="unknown optimizer.name 'lion'"):
        optim.make(_settings(name="lion", learning_rate=0.1), total_steps=100)
