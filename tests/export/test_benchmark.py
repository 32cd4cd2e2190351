"""Latency measurement: warm-up and iteration counts, percentiles and throughput per batch size,
torch-side timing, and merging measurements of several machines."""

import torch

from export.benchmark import ROUNDS, benchmark_sessions, benchmark_torch, merge_latency, summarize, time_calls
from export.environment import device_name
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
            assert r.iterations == 2 * ROUNDS and 0 < r.p50_ms <= r.p90_ms <= r.p99_ms
            assert r.device_name == device_name("cpu") and r.runtime == "onnxruntime"
            assert r.throughput_per_s == round(r.batch_size * 1000 / r.p50_ms, 2)


def test_summary_percentiles_and_throughput():
    times = [float(t) for t in range(1, 101)]  # 1..100 ms
    r = summarize(times, device="cpu", device_name="x", runtime="torch", provider="torch-cpu", batch_size=8, threads=1)
    assert (r.p50_ms, r.p90_ms, r.p99_ms, r.mean_ms) == (50.5, 90.1, 99.01, 50.5)
    assert r.throughput_per_s == round(8 * 1000 / 50.5, 2) and r.iterations == 100


def test_torch_latency_per_batch_size():
    results = benchmark_torch(mlp(), torch.randn(3, 12), [1, 4], threads=1, device="cpu", warmup=1, iterations=6)
    assert [(r.batch_size, r.runtime, r.provider, r.iterations) for r in results] == [
        (1, "torch", "torch-cpu", 6),
        (4, "torch", "torch-cpu", 6),
    ]
    assert torch.get_num_threads() >= 1


def test_merge_replaces_what_this_machine_measured_again_and_keeps_the_rest():
    def entry(device_name, batch, p50, runtime="onnxruntime"):
        return {"device_name": device_name, "runtime": runtime, "provider": "P", "batch_size": batch, "p50_ms": p50}

    old = [entry("cpu A", 1, 1.0), entry("gpu B", 1, 0.1), entry("cpu A", 1, 5.0, runtime="torch")]
    new = [entry("cpu A", 1, 2.0)]
    assert merge_latency(old, new) == [entry("gpu B", 1, 0.1), entry("cpu A", 1, 5.0, runtime="torch"), new[0]]
    legacy = {"runtime": "onnxruntime", "provider": "P", "batch_size": 1, "p50_ms": 3.0}  # schema 1: no machine
    assert merge_latency([legacy], new) == new
