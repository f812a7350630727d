"""What several test modules share (no test module imports another): the repository root, configs
by name, `python -m jvision.main` as a subprocess (forked from a server that imported JAX once:
`forkserver.py`), and the PyTorch-twin comparison in float64."""

import atexit
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = "tiny"):
    """`configs/<name>.py:get_config(arg)`, as `--config=configs/<name>.py:<arg>` would load it."""
    path = os.path.join(ROOT, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def run_module(module: str, *args: str, timeout: int = 300, env: dict | None = None):
    """`python -m MODULE ARGS` from the repository root, output captured. Forked from this
    process's fork server (`forkserver.py`: the imports done once) unless `env` is given or
    JVISION_TEST_FORK=0; the returned `CompletedProcess` is the same either way."""
    if env is None and os.environ.get("JVISION_TEST_FORK", "1") != "0":
        server = _ForkServer.get()
        if server is not None:
            return server.run(module, args, timeout)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """`python benchmarks/SCRIPT ARGS` as a user runs it: from the repository root, in its own
    process, XLA_FLAGS unset."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [sys.executable, os.path.join("benchmarks", script), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every body row of the Markdown tables in `text` (headers and rules left out)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rules = {i for i, line in enumerate(lines) if line.startswith("|---")}
    body = [line for i, line in enumerate(lines) if i not in rules and i + 1 not in rules]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in body]


def run_main(*args: str, timeout: int = 300, env: dict | None = None):
    """`python -m jvision.main ARGS` from the repository root, output captured."""
    return run_module("jvision.main", *args, timeout=timeout, env=env)


class _ForkServer:
    """This process's `forkserver.py`, started at the first run; None when it cannot serve."""

    _server: "_ForkServer | None | bool" = False  # False: not started yet.
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> "_ForkServer | None":
        with cls._lock:
            if cls._server is False:
                cls._server = cls._start()
            return cls._server

    @classmethod
    def _start(cls) -> "_ForkServer | None":
        process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "forkserver.py")],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if process.stdout.readline().strip() != "ready":  # It said why on stderr.
            process.wait()
            return None
        atexit.register(process.stdin.close)  # The server exits when its stdin closes.
        return cls(process)

    def __init__(self, process: subprocess.Popen):
        self.process = process

    def run(self, module: str, args: tuple, timeout: float) -> subprocess.CompletedProcess:
        with self._lock, tempfile.TemporaryDirectory() as folder:
            out, err = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
            for path in (out, err):
                open(path, "w").close()
            request = dict(module=module, args=list(args), cwd=ROOT, stdout=out, stderr=err)
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = int(self.process.stdout.readline())
            expired = threading.Event()

            def kill():
                expired.set()
                os.kill(pid, signal.SIGKILL)

            killer = threading.Timer(timeout, kill)
            killer.start()
            returncode = int(self.process.stdout.readline())
            killer.cancel()
            with open(out) as stdout, open(err) as stderr:
                printed = stdout.read(), stderr.read()
        command = [sys.executable, "-m", module, *args]
        if expired.is_set():
            raise subprocess.TimeoutExpired(command, timeout, *printed)
        return subprocess.CompletedProcess(command, returncode, *printed)


# ----------------------------------------------------------------------------- PyTorch twins
#
# Fairness of the speed comparison: each twin (benchmarks/torch_models) must compute the same loss,
# gradients and optimizer step as its jvision model from the same weights, batch and noise. The
# comparison runs in float64 on both sides (JAX with x64 for the test only, torch `.double()`),
# so that the tolerances follow from float64 rounding and not from one CPU's float32 kernels:
#
# - Both sides compute the same sums in different orders (oneDNN vs XLA kernels). A sum of n
#   terms differs by at most about n·u·Σ|terms| between two orders (u = 2⁻⁵³ ≈ 1.1e-16); the
#   largest reductions here have n ≲ 10⁵ (the SSD's 42k prior losses, a conv kernel gradient's
#   B·H·W products), i.e. ≲ 1e-11 of the summed magnitudes, amplified by at most the depth of
#   the network and its BatchNorm divisions. LOSS_RTOL = GRAD_RTOL = 1e-8 leaves about three
#   orders of magnitude above that, and is still four orders below the smallest real difference
#   the float32 tests caught (a missing layout permutation: ≥ 1.4e-4 relative).
# - Gradients that are exactly zero in exact arithmetic (a conv bias right before a training-mode
#   BatchNorm) are pure rounding noise on both sides: bounded relative to the model's largest
#   gradient, by the same 1e-8.
# - A step of the optimizer from the same gradients is the same arithmetic on both sides, a few
#   roundings per element: parameters after it agree to STEP_RTOL = 1e-10 of their tensor's
#   largest value.
# - BatchNorm running means average the batch's activations: their rounding is relative to the
#   activations' spread σ (√ of the running variance), not to the mean, which may be far smaller
#   (PatchVAE's decoder sees appearance samples of σ ~ 300 at initialisation). Bound:
#   STATS_RTOL = 1e-8 of (|mean| + σ), again n·u ≲ 1e-11 with three orders to spare.

LOSS_RTOL = 1e-8
GRAD_RTOL = 1e-8
STEP_RTOL = 1e-10
STATS_RTOL = 1e-8


@contextlib.contextmanager
def float64():
    """JAX computes in float64 inside this block (and only there)."""
    import jax

    with jax.enable_x64(True):
        yield


def to_float64(tree):
    """Every floating array of a pytree (NumPy or JAX) as float64."""
    import jax
    import numpy as np

    def cast(x):
        x = np.asarray(x) if not hasattr(x, "dtype") else x
        return x.astype(np.float64) if np.issubdtype(x.dtype, np.floating) else x

    return jax.tree.map(cast, tree)


def model_to_float64(model) -> None:
    """Casts every floating variable of an NNX model to float64, in place (inside `float64()`)."""
    from flax import nnx

    nnx.update(model, to_float64(nnx.state(model)))


def built(build, model_config):
    """`build(model_config, nnx.Rngs(0))`, initialised in one jitted program (the same values).
    Eagerly, each initializer and each of its operations compiles a program of its own: 100 to
    200 per model, seconds in all, most of some test modules' time."""
    import jax
    from flax import nnx

    graphdef, _ = nnx.split(nnx.eval_shape(lambda: build(model_config, nnx.Rngs(0))))
    state = jax.jit(lambda: nnx.state(build(model_config, nnx.Rngs(0))))()
    return nnx.merge(graphdef, state)


def perturb(model, seed: int = 1) -> None:
    """Moves biases, BatchNorm scales and statistics off their initial 0s and 1s, so that the
    weight converter's handling of each is tested."""
    import numpy as np
    from flax import nnx

    rng = np.random.default_rng(seed)
    state = nnx.state(model)
    pure = nnx.to_pure_dict(state)

    def visit(node):
        for key, value in node.items():
            if isinstance(value, dict):
                visit(value)
            elif key in ("bias", "mean"):
                node[key] = value + rng.normal(0, 0.05, value.shape).astype(value.dtype)
            elif key in ("scale", "var"):
                node[key] = value * rng.uniform(0.7, 1.3, value.shape).astype(value.dtype)

    visit(pure)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(model, state)


def benchmark(name: str):
    """The module `benchmarks.<name>`, importable from the tests."""
    import importlib

    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    return importlib.import_module(f"benchmarks.{name}")


def twins():
    """`benchmarks.torch_models`: the PyTorch twins."""
    return benchmark("torch_models")


def jax_loss_and_grads(family, model):
    """A jitted `(model, batch, key, step) -> (loss, terms, grads)` of the family's train loss,
    differentiated with respect to the parameters jvision's trainer optimizes."""
    import jax.numpy as jnp
    from flax import nnx

    wrt = nnx.DiffState(0, family.trainable(model))
    grad_fn = nnx.jit(nnx.value_and_grad(family.train_loss, argnums=wrt, has_aux=True))

    def run(model, batch, key, step):
        (loss, terms), grads = grad_fn(model, batch, key, jnp.int32(step))
        return float(loss), {k: float(v) for k, v in terms.items()}, grads

    return run


def torch_tree(twin, tree, what):
    """jvision tree -> torch names and tensors; `what` picks parameters or buffers."""
    converted = twins().jvision_to_torch(twin, tree, partial=True)
    names = dict(twin.named_parameters()) if what == "params" else dict(twin.named_buffers())
    return {name: converted[name] for name in names if name in converted}


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def assert_terms_match(terms: dict, twin_terms: dict, loss: float, twin_loss: float) -> float:
    """Every loss term jvision reports must be reported by the twin and agree (LOSS_RTOL).
    Returns the largest relative difference."""
    assert set(twin_terms) == set(terms), set(twin_terms) ^ set(terms)
    worst = relative(twin_loss, loss)
    assert worst <= LOSS_RTOL, ("loss", twin_loss, loss)
    for name, value in terms.items():
        got = twin_terms[name].item()
        assert abs(got - value) <= LOSS_RTOL * max(abs(value), abs(loss)), (name, got, value)
        worst = max(worst, relative(got, value))
    return worst


def assert_grads_close(twin, jax_grads) -> tuple[float, float]:
    """The twin's gradients against jvision's: per tensor, |g_torch - g_jax| ≤
    GRAD_RTOL·(max|g_jax of that tensor| + max|g_jax of the model|) (see above).

    Returns the largest difference relative to its tensor's largest gradient over tensors whose
    gradients matter (largest value ≥ 1e-6 of the model's), and the largest difference relative
    to the model's largest gradient over the rest (rounding noise around exact zeros).
    """
    from flax import nnx

    expected = torch_tree(twin, nnx.to_pure_dict(jax_grads), "params")
    got = {n: p.grad for n, p in twin.named_parameters() if p.grad is not None}
    assert set(got) == set(expected), set(got) ^ set(expected)
    model_scale = max(float(g.abs().max()) for g in expected.values())
    meaningful, noise = 0.0, 0.0
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, (name, got[name].dtype, want.dtype)
        scale = float(want.abs().max())
        difference = float((got[name] - want).abs().max())
        assert difference <= GRAD_RTOL * (scale + model_scale), (
            name,
            difference,
            scale,
            model_scale,
        )
        if scale >= 1e-6 * model_scale:
            meaningful = max(meaningful, difference / scale)
        else:
            noise = max(noise, difference / model_scale)
    return meaningful, noise


def assert_step_matches(twin, model, grads, torch_optimizer, jax_optimizer) -> float:
    """Takes one optimizer step in both frameworks from jvision's gradients `grads`, then checks
    the parameters (STEP_RTOL) and BatchNorm running means (STATS_RTOL) they leave. Returns the
    largest difference relative to its tensor's largest value."""
    from flax import nnx

    torch_grads = torch_tree(twin, nnx.to_pure_dict(grads), "params")
    for parameter_name, parameter in twin.named_parameters():
        if parameter_name in torch_grads:
            parameter.grad = torch_grads[parameter_name].clone()
    torch_optimizer.step()
    nnx.jit(lambda optimizer, model, grads: optimizer.update(model, grads))(
        jax_optimizer, model, grads
    )
    state = nnx.to_pure_dict(nnx.state(model))
    tensors = dict(twin.named_parameters(), **dict(twin.named_buffers()))
    expected = {**torch_tree(twin, state, "params"), **torch_tree(twin, state, "buffers")}
    worst = 0.0
    for tensor_name, want in expected.items():
        if tensor_name.endswith("running_var"):
            continue  # Torch averages the unbiased batch variance, Flax the biased one.
        scale = max(float(want.abs().max()), 1e-300)
        difference = float((tensors[tensor_name].detach() - want).abs().max())
        if tensor_name.endswith("running_mean"):
            variance = expected[tensor_name.replace("running_mean", "running_var")]
            bound = STATS_RTOL * (scale + float(variance.max().sqrt()))
        else:
            bound = STEP_RTOL * scale
        assert difference <= bound, (tensor_name, difference, bound)
        worst = max(worst, difference / scale)
    return worst


def check_twin(config, batch: dict, step: int = 0, prepare=None) -> str:
    """Compares a config's jvision model with its PyTorch twin in float64: the loss and every
    term, the gradients, one optimizer step from the same gradients (and the BatchNorm running
    means it leaves), and the loss of the next step through the twin's `train_step`.

    `prepare(model)` may change the jvision model before its weights are copied to the twin;
    `batch` is NumPy (floats are cast to float64). Returns a one-line summary of the differences.
    """
    import jax
    from flax import nnx

    from jvision import models, optim

    tm = twins()
    family = models.get(config.model)
    size = len(next(iter(batch.values())))
    with float64():
        model = built(lambda _, rngs: family.build(rngs), config.model)
        model_to_float64(model)
        perturb(model)
        if prepare is not None:
            prepare(model)
        twin = tm.build(config).double()
        tm.load_jvision_weights(twin, nnx.to_pure_dict(nnx.state(model)))
        jax_optimizer = nnx.Optimizer(
            model, optim.make(config.optimizer, config.total_steps), wrt=family.trainable(model)
        )
        torch_optimizer = tm.make_optimizer(twin, config)
        batch = to_float64(batch)
        torch_batch = tm.to_torch_batch(batch)
        key = jax.random.fold_in(jax.random.key(config.seed), step)

        # The loss and its gradients at the same weights, batch and noise.
        loss_and_grads = jax_loss_and_grads(family, model)
        loss, terms, grads = loss_and_grads(model, batch, key, step)
        twin_loss, twin_terms = tm.train_loss(
            twin, torch_batch, tm.jax_noise(config, key, size), step
        )
        assert twin_loss.dtype == torch_float64(), twin_loss.dtype
        twin_loss.backward()
        for parameter in twin.parameters():  # Unused on both sides: jvision's gradient is 0.
            if parameter.requires_grad and parameter.grad is None:
                parameter.grad = parameter.detach() * 0
        term_diff = assert_terms_match(terms, twin_terms, loss, twin_loss.item())
        grad_diff = assert_grads_close(twin, grads)

        # One optimizer step from the same gradients, and the BatchNorm running means it left.
        step_diff = assert_step_matches(twin, model, grads, torch_optimizer, jax_optimizer)

        # The next step through `train_step`: its loss is that of the weights after the step.
        next_key = jax.random.fold_in(key, 1)
        next_loss, _, _ = loss_and_grads(model, batch, next_key, step + 1)
        twin_next = tm.train_step(
            twin, torch_optimizer, torch_batch, tm.jax_noise(config, next_key, size), step + 1
        )
        next_diff = relative(twin_next.item(), next_loss)
        assert next_diff <= LOSS_RTOL, (twin_next.item(), next_loss)
    return (
        f"loss {loss:.10g}: terms {term_diff:.1e}, gradients {grad_diff[0]:.1e} (noise "
        f"{grad_diff[1]:.1e}), parameters after a step {step_diff:.1e}, next loss {next_diff:.1e}"
    )


def torch_float64():
    import torch

    return torch.float64
