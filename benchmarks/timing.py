"""Times one config: jvision's train step against its PyTorch twin, eager and torch.compile'd.

jvision's jitted train step is built as `benchmarks/step_time.py` builds it (one device, the
config's global batch), and the twin of the same architecture, loss and optimizer
(`benchmarks/torch_models`), loaded with jvision's initial weights, on the same real batch from
jvision's Grain pipeline. Each framework draws its own noise inside its step (jvision from
`fold_in(key, step)`, the twin with torch's generator). After `warmup` steps of each, rounds
alternate jvision / PyTorch eager / torch.compile, `steps` steps each, `rounds` times, so a drift
in the machine's speed reaches all three alike; a framework's ms/step is the median over rounds of
(round wall time / steps), the spread the min-max over rounds. Each round ends on a completed step
(`block_until_ready`; `torch.cuda.synchronize` on a GPU); the twin's step is
`benchmarks.torch_models.train_step` (zero_grad, loss, backward, optimizer step).

Compile time: jvision's `step.lower(...).compile()` wall time; torch.compile's first call
(tracing, AOTAutograd and Inductor codegen of the loss, its backward and the optimizer step) plus
every warm-up call that compiled again (a guard failed, e.g. the step number, an int argument,
turned dynamic); frames compiled during the timed rounds are counted (`torch_recompiles_in_rounds`).

Then, outside the timed rounds: each framework's peak memory over one step (measure.py), and the
input pipeline alone: batches/s of jvision's Grain training iterator (`next(it)`, as step_time.py)
against the batches/s the jvision step consumes (1000 / ms per step).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from benchmarks.extras import EXTRAS
from benchmarks.machine import ThreadMeter
from benchmarks.measure import cost_flops, first_line, torch_step_peak_bytes, xla_memory_bytes
from jvision import config_files

if TYPE_CHECKING:
    import torch

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


@dataclasses.dataclass(frozen=True)
class Args:
    """compare.py's flags, as the timing and the extras read them."""

    rounds: int
    steps: int
    warmup: int
    no_compile: bool
    dtype: str  # jvision's model.dtype; the twin autocasts to it.
    placement: str  # jvision's data.placement.
    pipeline_batches: int
    ssd_steps_to_target: int  # For extras.py.
    ssd_steps_source: str


def load_config(spec: str) -> Any:
    """`name[:arg]` (configs/name.py) or `path.py[:arg]`: the config's `get_config(arg)`."""

    path, _, arg = spec.partition(":")
    if not path.endswith(".py"):
        path = os.path.join(CONFIGS_DIR, f"{path}.py")
    module = config_files.load_config_module(path)
    return module.get_config(arg or None)


def config_label(spec: str) -> str:
    """The config's name in the table: `configs/x.py:tiny` -> `x:tiny`."""
    path, _, arg = spec.partition(":")
    name = os.path.splitext(os.path.basename(path))[0]
    return f"{name}:{arg}" if arg else name


def compiled_frames() -> int:
    """Frames torch.compile has compiled in this process (since the last `_dynamo.reset`)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


@dataclasses.dataclass
class Twin:
    model: Any
    optimizer: Any
    run: Callable[[int, int], None]  # (first step, count); ends on a completed step.


def make_twin(
    model: Any, config: Any, batch: dict, device: torch.device, compiled: bool, dtype: str
) -> Twin:
    """The twin `model` on `device` with its optimizer, stepping on `batch`, eagerly or with
    torch.compile on its loss (forward, and through AOTAutograd its backward) and its optimizer
    step: the recommended split, as `loss.backward()` is a graph break. In bfloat16 its loss runs
    under `torch.autocast` (convolutions and matmuls in bfloat16, parameters float32), the
    counterpart of jvision's `model.dtype`."""
    import contextlib

    import torch

    from benchmarks import torch_models as tm

    model.to(device)
    optimizer = tm.make_optimizer(model, config)

    def autocast():
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, dtype))

    if compiled:
        compiled_loss = torch.compile(lambda b, step: model.loss(b, None, step)[0])

        def loss_fn(b, step):
            with autocast():
                return compiled_loss(b, step)

        optimizer_step = torch.compile(optimizer.step)

        def train_step(step):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(batch, step)
            loss.backward()
            optimizer_step()
            return loss.detach()
    else:

        def train_step(step):
            with autocast():
                return tm.train_step(model, optimizer, batch, None, step)

    def run(first, count):
        for step in range(first, first + count):
            train_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return Twin(model, optimizer, run)


def warm_up(runners: dict[str, Callable], steps: int, result: dict) -> dict[str, int]:
    """Takes `steps` untimed steps of each framework; returns the step each one goes on from.

    torch.compile compiles on its first call, and again on a later one if a guard fails (e.g. an
    int argument that changed becomes dynamic): every warm-up call that compiled a frame counts as
    compile time, in `result`. If it fails, "compiled" is dropped from `runners`."""
    first_step = dict.fromkeys(runners, 0)
    for name, run in list(runners.items()):
        if name != "compiled":
            run(0, steps)
            first_step[name] = steps
            continue
        compile_s, frames = 0.0, 0
        try:
            for step in range(max(steps, 1)):  # At least the call that compiles.
                start = time.perf_counter()
                run(step, 1)
                elapsed = time.perf_counter() - start
                if step == 0 or compiled_frames() > frames:
                    compile_s += elapsed
                frames = compiled_frames()
                first_step[name] = step + 1
        except Exception as error:
            traceback.print_exc()
            result["torch_compile_error"] = f"failed: {first_line(error)}"
            del runners[name]
            continue
        result["torch_compile_s"] = compile_s
        result["torch_compiled_frames"] = frames
    return first_step


def alternate(
    runners: dict[str, Callable], first_step: dict[str, int], rounds: int, steps: int
) -> dict:
    """The timed rounds (module docstring); advances `first_step`. Returns per framework its
    ms/step (median), each round's, its busy threads and CPU time / wall time (machine.py)."""
    times = {name: [] for name in runners}
    meters = {name: ThreadMeter() for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            with meters[name]:
                start = time.perf_counter()
                run(first_step[name], steps)
                elapsed = time.perf_counter() - start
            first_step[name] += steps
            times[name].append(elapsed / steps * 1e3)
    result = {}
    for name in runners:
        result[f"{name}_ms"] = statistics.median(times[name])
        result[f"{name}_ms_rounds"] = times[name]
        result[f"{name}_busy_threads"] = meters[name].busy_threads()
        result[f"{name}_cpu_per_wall"] = meters[name].cpu_per_wall()
        result[f"{name}_others_per_wall"] = meters[name].others_per_wall()
    return result


def pipeline_batches_per_s(data: Iterator, batches: int) -> float:
    """The input pipeline on its own. Run after the rounds: its prefetch buffer filled during
    them, and the first `next` takes what is already there."""
    next(data)
    start = time.perf_counter()
    for _ in range(batches):
        next(data)
    return batches / (time.perf_counter() - start)


def compare_config(spec: str, device: torch.device, args: Args) -> dict:
    """Times one config (module docstring); returns its row of the JSON, with its extra if
    extras.py has one."""
    import jax
    from flax import nnx

    from benchmarks import torch_models as tm
    from benchmarks.jvision_step import compile_step

    label = config_label(spec)
    config = load_config(spec)
    config.model.dtype, config.data.placement = args.dtype, args.placement
    result = {"config": label, "model": config.model.name, "batch": config.batch_size}

    jvision_step = compile_step(config)
    result["dtype"], result["placement"] = args.dtype, jvision_step.placement
    result["jvision_compile_s"] = jvision_step.compile_s
    result["flops"] = cost_flops(jvision_step.compiled)
    result["jvision_memory"] = xla_memory_bytes(jvision_step.compiled)

    # The twin, from jvision's initial weights (before any jvision step: the state is donated).
    model = tm.build(config)
    tm.load_jvision_weights(model, nnx.to_pure_dict(jvision_step.state["model"]))
    compiled_model = None if args.no_compile else copy.deepcopy(model)  # Each its own weights.
    batch = {k: v.to(device) for k, v in tm.to_torch_batch(jvision_step.host_batch).items()}
    twins = {"eager": make_twin(model, config, batch, device, False, args.dtype)}
    if compiled_model is None:
        result["torch_compile_error"] = "skipped (--no_compile)"
    else:
        twins["compiled"] = make_twin(compiled_model, config, batch, device, True, args.dtype)
    runners = {"jvision": jvision_step.run} | {name: twin.run for name, twin in twins.items()}

    first_step = warm_up(runners, args.warmup, result)
    twins = {name: twin for name, twin in twins.items() if name in runners}  # torch.compile failed?
    result |= alternate(runners, first_step, args.rounds, args.steps)
    if "compiled" in runners:
        result["torch_recompiles_in_rounds"] = compiled_frames() - result["torch_compiled_frames"]

    # Peak memory of one step, outside the timed rounds (the profiler slows the step down).
    for name, twin in twins.items():
        step = functools.partial(twin.run, first_step[name], 1)
        result[f"{name}_memory_bytes"] = torch_step_peak_bytes(
            step, twin.model, twin.optimizer, batch, device
        )
    if device.type == "cuda":
        stats = jax.devices()[0].memory_stats() or {}
        result["jax_device_peak_bytes_in_use"] = stats.get("peak_bytes_in_use")

    result["pipeline_batches_per_s"] = pipeline_batches_per_s(
        jvision_step.data, args.pipeline_batches
    )
    result["step_batches_per_s"] = 1e3 / result["jvision_ms"]

    if label in EXTRAS:
        result |= EXTRAS[label].measure(config, result, args)
    return result
