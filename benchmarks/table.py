"""The Markdown table (one row per config) and its footnotes, from compare.py's results."""

from typing import Any

from benchmarks.extras import EXTRAS

FRAMEWORKS = ("jvision", "eager", "compiled")

HEADER = (
    "| config | batch | dtype, data | jvision ms/step | PyTorch eager ms/step "
    "| torch.compile ms/step "
    "| jvision speed-up vs eager (eager ms / jvision ms) "
    "| jvision speed-up vs compiled (compiled ms / jvision ms) "
    "| jvision compile s | torch.compile s | GFLOP/step "
    "| GFLOP/s (% of matmul peak): jvision / eager / compiled "
    "| peak memory MiB: jvision / eager / compiled "
    "| CPU time / wall time: jvision / eager / compiled "
    "| pipeline vs step, batches/s |"
)


def _ms(result, name) -> str:
    if f"{name}_ms" not in result:
        error = result.get("torch_compile_error", "") if name == "compiled" else ""
        return "skipped" if error.startswith("skipped") else "failed" if error else "—"
    rounds = result[f"{name}_ms_rounds"]
    value = result[f"{name}_ms"]
    digits = 1 if value >= 10 else 2
    if len(rounds) == 1:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({min(rounds):.{digits}f}–{max(rounds):.{digits}f})"


def _ratio(result, name) -> str:
    if f"{name}_ms" not in result:
        return "—"
    return f"{result[f'{name}_ms'] / result['jvision_ms']:.2f}×"


def _times(value: float) -> str:
    """`47×`, `1.1×`, `0.24×`: two significant digits below 10 (a stall must not read as 0×)."""
    return f"{value:.0f}×" if value >= 10 else f"{value:.2g}×"


def _mib(value) -> str:
    return "—" if value is None else f"{value / 2**20:.1f}"


def _gflops(result, name, peak) -> str:
    if not result.get("flops") or f"{name}_ms" not in result:
        return "—"
    rate = result["flops"] / (result[f"{name}_ms"] / 1e3) / 1e9
    return f"{rate:.{0 if rate >= 10 else 1}f} ({100 * rate / peak:.{0 if rate >= 10 else 1}f}%)"


def table(results: list[dict], peak_gflops: float) -> list[str]:
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for r in results:
        if "error" in r:
            cells = [f"`{r['config']}`", "—", "—", f"failed: {r['error']}"] + ["—"] * 11
            lines.append("| " + " | ".join(cells) + " |")
            continue
        memory = r.get("jvision_memory") or {}
        cells = [
            f"`{r['config']}`",
            str(r["batch"]),
            f"{r['dtype']}, {r['placement']}",
            _ms(r, "jvision"),
            _ms(r, "eager"),
            _ms(r, "compiled"),
            _ratio(r, "eager"),
            _ratio(r, "compiled"),
            f"{r['jvision_compile_s']:.1f}",
            f"{r['torch_compile_s']:.1f}" if "torch_compile_s" in r else "—",
            f"{r['flops'] / 1e9:.3g}" if r.get("flops") else "—",
            " / ".join(_gflops(r, n, peak_gflops) for n in FRAMEWORKS),
            " / ".join(
                [
                    _mib(memory.get("peak")),
                    _mib(r.get("eager_memory_bytes")),
                    _mib(r.get("compiled_memory_bytes")),
                ]
            ),
            " / ".join(
                f"{r[f'{n}_cpu_per_wall']:.2f}" if f"{n}_cpu_per_wall" in r else "—"
                for n in FRAMEWORKS
            ),
            f"{r['pipeline_batches_per_s']:,.0f} vs {r['step_batches_per_s']:,.0f} "
            f"({_times(r['pipeline_batches_per_s'] / r['step_batches_per_s'])})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def method_notes(machine: dict, args: Any) -> list[str]:
    """The footnotes that say how every column was measured."""
    peak = machine["matmul"]
    return [
        f"Machine: {machine['device_line']}. Threads: {machine['threads']} for both frameworks "
        f"(XLA: PJRT_NPROC; PyTorch: set_num_threads, 1 inter-op thread)"
        + (f", pinned to CPUs {machine['pinned_to']}" if machine["pinned_to"] else "")
        + f". {machine['date']}; jax {machine['jax']}, torch {machine['torch']}; load average "
        f"{machine['loadavg_start']} at the start, {machine['loadavg_end']} at the end.",
        f"ms/step: median over {args.rounds} alternating rounds of {args.steps} steps each "
        f"(min–max over rounds in parentheses), after {args.warmup} warm-up steps; one real batch "
        "from jvision's pipeline, on the device; each framework draws its own noise in its step.",
        "Speed-ups: PyTorch ms / jvision ms (above 1: jvision is faster).",
        "Compile: jvision `lower().compile()`; torch.compile's first call (loss, backward and "
        "optimizer step compiled by Inductor) and any warm-up call that recompiled.",
        f"GFLOP/step: XLA's cost analysis of jvision's step; the same count is used for PyTorch "
        f"(same model, same work). Matmul peak: float32 {peak['size']}³, "
        f"{peak['peak_gflops']:.0f} GFLOP/s (JAX {peak['jax_gflops_start']:.0f} → "
        f"{peak['jax_gflops_end']:.0f}, PyTorch {peak['torch_gflops_start']:.0f} → "
        f"{peak['torch_gflops_end']:.0f}, start → end of the run; the highest is the peak).",
        "Peak memory: jvision: XLA's buffer assignment of the compiled step (arguments + outputs "
        "- donated + temporaries); PyTorch: "
        + (
            "`torch.cuda.max_memory_allocated()` over one step."
            if machine["gpu"]
            else "tensors alive at the step's start (parameters, buffers, optimizer state, "
            "batch) + peak bytes allocated through its CPU allocator during one step "
            "(torch.profiler, profile_memory). Neither counts code, caches or thread stacks."
        ),
        "Pipeline: jvision's Grain iterator alone (`next(it)`) vs the batches/s jvision's step "
        "consumes; it must be higher or the step waits for data.",
    ]


# Other processes' CPU time during a framework's rounds, in cores, from which they count as
# contended (machine.ThreadMeter.others_per_wall): an idle machine measures under 0.05.
CONTENDED_CORES = 0.25


def thread_notes(r: dict, machine: dict) -> list[str]:
    """On CPU: each framework's busy threads and CPU time / wall time, and whether it starved."""
    if machine["gpu"]:
        return []
    name = r["config"]
    threads = ", ".join(
        f"{n} {r[f'{n}_busy_threads'] if r[f'{n}_busy_threads'] is not None else '?'} "
        f"({r[f'{n}_cpu_per_wall']:.2f})"
        for n in FRAMEWORKS
        if f"{n}_busy_threads" in r
    )
    notes = [
        f"`{name}`: threads that ran ≥ 5% of the timed rounds (CPU time / wall time): "
        f"{threads}; XLA's count includes the Python thread that dispatches the step."
    ]
    contended = {
        n: r[f"{n}_others_per_wall"]
        for n in FRAMEWORKS
        if r.get(f"{n}_others_per_wall", 0.0) >= CONTENDED_CORES
    }
    if contended:
        taken = ", ".join(f"{n} {cores:.2f}" for n, cores in contended.items())
        notes.append(
            f"`{name}`: **contended**: other processes used {taken} cores' worth of CPU time "
            f"on these {machine['threads']} cores during the rounds (load average "
            f"{machine['loadavg_start']} → {machine['loadavg_end']}); PyTorch's OpenMP threads "
            "wait at every op for a descheduled peer. Run on an idle machine or compare "
            "`--threads=1`."
        )
    return notes


def compile_notes(r: dict) -> list[str]:
    """Whether torch.compile failed, paid back its compile time, or recompiled while timed."""
    name = r["config"]
    if "torch_compile_error" in r:
        return [f"`{name}`: torch.compile {r['torch_compile_error']}."]
    if "compiled_ms" not in r:
        return []
    gain = r["eager_ms"] - r["compiled_ms"]
    if gain <= 0:
        notes = [
            f"`{name}`: torch.compile does not pay: {r['compiled_ms']:.1f} ms vs eager "
            f"{r['eager_ms']:.1f} ms per step, after {r['torch_compile_s']:.0f} s of compilation."
        ]
    else:
        notes = [
            f"`{name}`: torch.compile saves {gain:.1f} ms per step; its "
            f"{r['torch_compile_s']:.0f} s of compilation pay back after "
            f"{r['torch_compile_s'] * 1e3 / gain:,.0f} steps."
        ]
    if r.get("torch_recompiles_in_rounds"):
        notes.append(
            f"`{name}`: torch.compile compiled {r['torch_recompiles_in_rounds']} more "
            "frame(s) during the timed rounds (recompilation: its ms/step includes it)."
        )
    return notes


def footnotes(results: list[dict], machine: dict, args: Any) -> list[str]:
    notes = method_notes(machine, args)
    for r in results:
        if "error" in r:
            continue
        notes += thread_notes(r, machine) + compile_notes(r)
        if r["config"] in EXTRAS:
            notes.append(EXTRAS[r["config"]].footnote(r))
    return notes


def markdown(results: list[dict], machine: dict, args: Any) -> str:
    """The table, then its footnotes as a list."""
    lines = table(results, machine["matmul"]["peak_gflops"])
    notes = footnotes(results, machine, args)
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
