"""Latency measurement: warm-up and iteration counts, records per batch size."""

import torch

from export.benchmark import ROUNDS, benchmark_sessions, time_calls
from export.onnx_export import to_onnx
from export.runtime import make_session
from tests.tiny_models import mlp


def test_time_calls_counts_warmup_and_iterations():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=3, iterations=7, max_seconds=60)
    assert len(calls) == 10 and len(times) == 7
    assert all(t >= 0 for t in times)


def test_time_budget_stops_early_but_keeps_five_runs():
    times = time_calls(lambda: None, warmup=0, iterations=10_000, max_seconds=1e-9)
    assert len(times) == 5


def test_benchmark_records_each_batch_size_for_every_session(tmp_path):
    path = to_onnx(mlp(), torch.randn(2, 12), tmp_path / "m.onnx").path
    sessions = {"a": make_session(path, threads=1), "b": make_session(path, threads=1)}
    results = benchmark_sessions(sessions, torch.randn(3, 12), [1, 4], threads=1, warmup=1, iterations=2 * ROUNDS)
    assert set(results) == {"a", "b"}
    for latencies in results.values():
        assert [r.batch_size for r in latencies] == [1, 4]
        for r in latencies:
            assert r.device == "cpu" and r.provider == "CPUExecutionProvider" and r.threads == 1
            assert r.iterations == 2 * ROUNDS and 0 < r.p50_ms <= r.p90_ms
