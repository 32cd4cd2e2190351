"""Latency of artifacts: warm-up, then timed runs, percentiles and throughput.

Each measurement runs ``warmup`` untimed calls, then up to ``iterations`` timed calls
or until ``max_seconds`` pass, with the artifacts of a run taking turns (see
``benchmark_sessions``). Timings are wall-clock per call with
``time.perf_counter``, on one fixed input batch, with a fixed intra-op thread count.
On CUDA, ONNX Runtime runs through IO binding with inputs and outputs already on the
device, and torch calls end in ``torch.cuda.synchronize``, so a timing is the device's work.
"""

import datetime
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compress.models.data import take_rows
from compress.recipe.schema import usable_cores
from export.measure.environment import device_name
from export.onnx.runtime import feed


@dataclass
class Latency:
    device: str
    device_name: str
    runtime: str
    provider: str
    batch_size: int
    threads: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_per_s: float
    p10_ms: float = 0.0
    cv: float = 0.0  # coefficient of variation (std / mean) over the timed calls
    load_before: float | None = None  # 1-minute load average per usable core, before and after
    load_after: float | None = None
    # Cores' worth of CPU that other processes (and the hypervisor's steal) used while this was timed,
    # on average; None where /proc/stat does not describe this machine's usable cores.
    other_cores: float | None = None
    unreliable: bool = False
    measured_at: str = ""  # UTC, ISO 8601: with device_name, when and where the figure was taken

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def time_calls(call, warmup: int, iterations: int, max_seconds: float, minimum: int = 5) -> list[float]:
    """Wall-clock milliseconds of each timed call: up to ``iterations``, at least ``minimum``."""
    for _ in range(warmup):
        call()
    times, deadline = [], time.perf_counter() + max_seconds
    while len(times) < iterations and (len(times) < minimum or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def latency_key(entry: dict) -> tuple:
    """What one latency entry measures: machine, runtime, provider and batch size."""
    return entry.get("device_name"), entry["runtime"], entry["provider"], entry["batch_size"]


def merge_latency(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` entries of other machines or runtimes kept, those ``new`` measures again replaced.
    Entries without a ``device_name`` (reports before schema 2) name no machine, so they go."""
    replaced = {latency_key(e) for e in new}
    return [e for e in old if "device_name" in e and latency_key(e) not in replaced] + new


def mark_stale(entries: list[dict], torch_reason: str) -> None:
    """Mark every entry as not re-measured (``stale``, with why); those measured again replace them
    (``merge_latency``), so what stays marked is an older figure shown for what it is. ``torch_reason``:
    why the torch rows cannot be measured again here (e.g. no ``--trust-run``)."""
    for entry in entries:
        if entry["runtime"] == "torch":
            reason = torch_reason
        else:
            reason = "not re-measured on this machine (measured on another one, or the artifact was not measured now)"
        entry.update(stale=True, stale_reason=reason)


def fresh(entries: list[dict]) -> list[dict]:
    """The entries measured in this run or re-measurement: what figures of one run are compared among."""
    return [e for e in entries if not e.get("stale")]


# A figure is marked unreliable past these: the middle 80% of its calls spread over more than half
# their median (p10 to p90: a few stalled calls, which the median ignores, do not count), or
# other processes took more than a quarter of the cores while it was timed. This process's own threads
# are no competition: a load average counts them, so it flags every 2-thread timing on 2 cores, and
# is the rule only where /proc/stat cannot tell other work apart (more runnable work than cores).
MAX_SPREAD = 0.5
MAX_OTHER_SHARE = 0.25
MAX_LOAD_PER_CORE = 1.0


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the machine, steal included; of this process; wall clock), from /proc/stat.
    None where it is missing or counts other cores than this process may use (a container on a big host)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        values = [int(x) for x in lines[0].split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError, IndexError):
        return None
    if sum(line.startswith("cpu") for line in lines) - 1 != usable_cores() or len(values) < 8:
        return None
    own = os.times()
    busy = (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")
    return busy, own.user + own.system, time.perf_counter()


def other_cores_since(before: tuple[float, float, float] | None, ours_elsewhere_s: float = 0.0) -> float | None:
    """Cores' worth of CPU other processes used since ``before`` (a ``cpu_snapshot``), on average;
    ``ours_elsewhere_s``: CPU seconds of this run's own child processes, which are no competition either."""
    after = cpu_snapshot()
    if before is None or after is None or after[2] <= before[2]:
        return None
    others = (after[0] - before[0]) - (after[1] - before[1]) - ours_elsewhere_s
    return round(max(0.0, others) / (after[2] - before[2]), 3)


def load_per_core() -> float | None:
    """The 1-minute load average divided by the usable cores; None where the OS has none."""
    if not hasattr(os, "getloadavg"):
        return None
    return round(os.getloadavg()[0] / usable_cores(), 3)


def summarize(
    times: list[float], load_before: float | None = None, cpu_before: tuple | None = None, **fields
) -> Latency:
    """The figures of ``times``; ``load_before`` and ``cpu_before`` (a ``cpu_snapshot``) taken before timing."""
    p50 = round(float(np.percentile(times, 50)), 4)
    mean = float(np.mean(times))
    cv = round(float(np.std(times)) / mean, 4) if mean > 0 else 0.0
    p10, p90 = (round(float(np.percentile(times, q)), 4) for q in (10, 90))
    spread = (p90 - p10) / p50 if p50 > 0 else 0.0
    load_after = load_per_core()
    others = other_cores_since(cpu_before)
    if others is not None:
        loaded = others > MAX_OTHER_SHARE * usable_cores()
    else:
        loaded = any(load is not None and load > MAX_LOAD_PER_CORE for load in (load_before, load_after))
    return Latency(
        **fields,
        p10_ms=p10,
        cv=cv,
        load_before=load_before,
        load_after=load_after,
        other_cores=others,
        unreliable=spread > MAX_SPREAD or loaded,
        measured_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        iterations=len(times),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=round(float(np.percentile(times, 99)), 4),
        mean_ms=round(mean, 4),
        throughput_per_s=round(fields["batch_size"] * 1000 / p50, 2),
    )


ROUNDS = 10
TURN_WARMUP_SECONDS = 0.1


def warm(call, seconds: float = TURN_WARMUP_SECONDS) -> None:
    """Untimed calls for ``seconds`` (at least one) at the start of a turn: the previous artifact's
    ONNX Runtime threads are still spinning and its weights fill the caches. Without this, a 90 MB
    model measured right after another one reads twice as slow at batch 1."""
    deadline = time.perf_counter() + seconds
    call()
    while time.perf_counter() < deadline:
        call()


def _runner(session, inputs: dict):
    """A no-argument call running ``session`` once; on CUDA through IO binding, data kept on the device."""
    provider = session.get_providers()[0]
    if not provider.startswith("CUDA"):
        return lambda: session.run(None, inputs)
    import onnxruntime as ort

    binding = session.io_binding()
    for name, array in inputs.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")

    def call():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return call


def benchmark_sessions(
    sessions: dict, sample_inputs, batch_sizes, threads: int, warmup=10, iterations=100, max_seconds=5.0
) -> dict[str, list[Latency]]:
    """Per session, one Latency per batch size; inputs are ``sample_inputs`` rows cycled to the batch size.

    The sessions take turns: each batch size is timed in ``ROUNDS`` rounds, and in every round each
    session warms up (``warm``), then runs its share of the iterations. Load on a shared machine then hits all artifacts
    alike, so their ratios hold even when absolute timings drift.
    """
    results: dict[str, list[Latency]] = {name: [] for name in sessions}
    per_round = max(1, iterations // ROUNDS)
    for batch_size in batch_sizes:
        load_before, cpu_before = load_per_core(), cpu_snapshot()
        rows = take_rows(sample_inputs, batch_size)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        calls = {name: _runner(session, feed(rows, session)) for name, session in sessions.items()}
        for call in calls.values():
            time_calls(call, warmup, 0, 0)
        for _ in range(ROUNDS):
            for name, call in calls.items():
                warm(call)
                times[name] += time_calls(call, 0, per_round, max_seconds / ROUNDS, minimum=1)
        for name, session in sessions.items():
            provider = session.get_providers()[0]
            device = "cuda" if provider.startswith("CUDA") else "cpu"
            results[name].append(
                summarize(
                    times[name],
                    load_before,
                    cpu_before,
                    device=device,
                    device_name=device_name(device),
                    runtime="onnxruntime",
                    provider=provider,
                    batch_size=batch_size,
                    threads=threads,
                )
            )
    return results


def benchmark_torch(
    model, sample_inputs, batch_sizes, threads: int, device: str, warmup=10, iterations=100, max_seconds=5.0
) -> list[Latency]:
    """Latency of a torch module (a torch-side variant, e.g. bitsandbytes layers) on ``device``."""
    import torch

    from compress.models.data import call_model, to_device

    model = model.to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    results = []
    try:
        for batch_size in batch_sizes:
            inputs = to_device(take_rows(sample_inputs, batch_size), device)

            def call(i=inputs):
                with torch.inference_mode():
                    call_model(model, i)
                sync()

            load_before, cpu_before = load_per_core(), cpu_snapshot()
            times = time_calls(call, warmup, iterations, max_seconds)
            provider = f"torch-{device}"
            fields = dict(device=device, device_name=device_name(device), runtime="torch", provider=provider)
            results.append(summarize(times, load_before, cpu_before, **fields, batch_size=batch_size, threads=threads))
    finally:
        torch.set_num_threads(previous_threads)
    return results
