"""Latency of an ONNX artifact in ONNX Runtime: warm-up, then timed runs, percentiles.

Each measurement runs ``warmup`` untimed calls, then up to ``iterations`` timed calls
or until ``max_seconds`` pass (at least 5 calls). Timings are wall-clock per call with
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


def time_calls(call, warmup: int, iterations: int, max_seconds: float) -> list[float]:
    """Wall-clock milliseconds of each timed call."""
    for _ in range(warmup):
        call()
    times, deadline = [], time.perf_counter() + max_seconds
    while len(times) < iterations and (len(times) < 5 or time.perf_counter() < deadline):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return times


def benchmark_session(session, sample_inputs, batch_sizes, threads: int, warmup=10, iterations=100, max_seconds=5.0):
    """One Latency per batch size; inputs are ``sample_inputs`` rows, cycled to the batch size."""
    results = []
    provider = session.get_providers()[0]
    for batch_size in batch_sizes:
        inputs = feed(take_rows(sample_inputs, batch_size))
        times = time_calls(lambda feed_=inputs: session.run(None, feed_), warmup, iterations, max_seconds)
        results.append(
            Latency(
                device="cuda" if provider.startswith("CUDA") else "cpu",
                runtime="onnxruntime",
                provider=provider,
                batch_size=batch_size,
                threads=threads,
                iterations=len(times),
                p50_ms=round(float(np.percentile(times, 50)), 4),
                p90_ms=round(float(np.percentile(times, 90)), 4),
                mean_ms=round(float(np.mean(times)), 4),
            )
        )
    return results
