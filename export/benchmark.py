"""Latency of an ONNX artifact in ONNX Runtime: warm-up, then timed runs, percentiles.

Each measurement runs ``warmup`` untimed calls, then up to ``iterations`` timed calls
or until ``max_seconds`` pass, with the artifacts of a run taking turns (see
``benchmark_sessions``). Timings are wall-clock per call with
``time.perf_counter``, on one fixed input batch, with a fixed intra-op thread count.
"""

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from compress.data import take_rows
from export.runtime import feed


@dataclass
class Latency:
    device: str
    runtime: str
    provider: str
    batch_size: int
    threads: int
    iterations: int
    p50_ms: float
    p90_ms: float
    mean_ms: float

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
        inputs = feed(take_rows(sample_inputs, batch_size))
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for session in sessions.values():
            time_calls(lambda s=session, i=inputs: s.run(None, i), warmup, 0, 0)
        for _ in range(ROUNDS):
            for name, session in sessions.items():
                call = lambda s=session, i=inputs: s.run(None, i)  # noqa: E731
                warm(call)
                times[name] += time_calls(call, 0, per_round, max_seconds / ROUNDS, minimum=1)
        for name, session in sessions.items():
            provider = session.get_providers()[0]
            results[name].append(
                Latency(
                    device="cuda" if provider.startswith("CUDA") else "cpu",
                    runtime="onnxruntime",
                    provider=provider,
                    batch_size=batch_size,
                    threads=threads,
                    iterations=len(times[name]),
                    p50_ms=round(float(np.percentile(times[name], 50)), 4),
                    p90_ms=round(float(np.percentile(times[name], 90)), 4),
                    mean_ms=round(float(np.mean(times[name])), 4),
                )
            )
    return results
