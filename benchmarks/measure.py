"""FLOPs and peak memory of one train step, each framework counted its own way.

FLOPs: `compiled.cost_analysis()["flops"]` of jvision's step (XLA's count: 2 per multiply-add of
dots and convolutions, 1 per elementwise op). Both frameworks do the same work, so compare.py
divides that one count by each framework's step time.

Peak memory: for jvision, XLA's own buffer assignment of the compiled step
(`compiled.memory_analysis()`: arguments + outputs - donated aliases + temporaries: state, batch
and every intermediate, what XLA allocates for one step); for PyTorch on CPU, the tensors alive
when the step starts (parameters, buffers, optimizer state, batch; gradients freed) plus the peak
of bytes allocated through PyTorch's CPU allocator during one step (`torch.profiler` with
`profile_memory=True`, each allocation's running total), i.e. the same quantity counted by the
allocator rather than planned by a compiler. Neither counts the frameworks' code, caches or thread
stacks. On a GPU: `torch.cuda.max_memory_allocated()` over one step (reset before); for jvision,
compare.py also records the device's `peak_bytes_in_use` (it cannot be reset between configs).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def first_line(error: BaseException) -> str:
    """The error's type and first line, short enough for a table cell or a footnote."""
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def cost_flops(compiled: Any) -> float | None:
    """XLA's FLOP count of a compiled function; None where the backend has none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # Not every backend implements it.
        return None
    if isinstance(cost, list | tuple):  # One entry per program in some jax versions.
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def xla_memory_bytes(compiled: Any) -> dict | None:
    """XLA's buffer sizes of a compiled function, with their `peak` (module docstring)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:
        return None
    if analysis is None:
        return None
    fields = ("argument", "output", "alias", "temp", "generated_code")
    out = {f: int(getattr(analysis, f"{f}_size_in_bytes", 0)) for f in fields}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def torch_live_bytes(model: Any, optimizer: Any, batch: dict) -> int:
    """Bytes of the tensors alive at the start of a step (gradients freed): parameters, buffers,
    optimizer state and the batch, each storage counted once."""
    import torch

    seen, total = set(), 0

    def add(tensor):
        nonlocal total
        if isinstance(tensor, torch.Tensor):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()

    for tensor in [*model.parameters(), *model.buffers(), *batch.values()]:
        add(tensor)
    for state in optimizer.state.values():
        for value in state.values():
            add(value)
    return total


def torch_step_peak_bytes(
    step: Callable[[], Any], model: Any, optimizer: Any, batch: dict, device: torch.device
) -> int | None:
    """Peak bytes during one `step()` (module docstring); None if the profiler fails."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        live = torch_live_bytes(model, optimizer, batch)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step()

        def walk(events):
            for event in events:
                yield event
                yield from walk(event.children)

        tree = prof.profiler.kineto_results.experimental_event_tree()
        totals = [
            e.extra_fields.total_allocated
            for e in walk(tree)
            if e.tag == _EventType.Allocation and str(e.extra_fields.device) == "cpu"
        ]
        return live + max([0, *totals])
    except Exception as error:  # Private profiler API: report rather than fail.
        print(f"warning: torch memory measurement failed: {first_line(error)}", file=sys.stderr)
        return None
