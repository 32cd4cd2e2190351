"""Latency measurement: warm-up and iteration counts, percentiles and throughput per batch size,
torch-side timing, and merging measurements of several machines."""

import torch

from export.measure.benchmark import ROUNDS, benchmark_sessions, benchmark_torch, merge_latency, summarize, time_calls
from export.measure.environment import device_name
from export.onnx.exporter import to_onnx
from export.onnx.runtime import make_session
from tests.tiny_models import mlp

FIELDS = dict(device="cpu", device_name="x", runtime="torch", provider="torch-cpu", batch_size=1, threads=1)


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


def test_noisy_or_loaded_timings_are_marked_unreliable(monkeypatch):
    import export.measure.benchmark as benchmark

    monkeypatch.setattr(benchmark, "load_per_core", lambda: 0.2)
    steady = benchmark.summarize([1.0, 1.0, 1.1, 0.9, 1.0], 0.2, **FIELDS)
    assert (steady.p10_ms, steady.p90_ms, steady.unreliable) == (0.94, 1.06, False)
    assert steady.cv == 0.0632 and steady.load_before == steady.load_after == 0.2
    noisy = benchmark.summarize([1.0, 1.0, 3.0, 0.9, 1.0], 0.2, **FIELDS)
    assert (noisy.p90_ms - noisy.p10_ms) / noisy.p50_ms > benchmark.MAX_SPREAD and noisy.unreliable
    stalled = benchmark.summarize([1.0] * 18 + [0.95, 30.0], 0.2, **FIELDS)  # one stalled call of 20
    assert stalled.cv > 1 and stalled.p50_ms == 1.0 and not stalled.unreliable
    loaded = benchmark.summarize([1.0, 1.0, 1.1, 0.9, 1.0], 3.5, **FIELDS)
    assert loaded.unreliable and loaded.load_before == 3.5


def test_a_measurement_beside_a_busy_thread_records_spread_and_load():
    import threading

    stop = threading.Event()

    def burn():
        while not stop.is_set():
            sum(range(1000))

    thread = threading.Thread(target=burn)
    thread.start()
    try:
        from export.measure.benchmark import load_per_core

        result = summarize(time_calls(lambda: sum(range(2000)), 2, 20, 5.0), load_per_core(), **FIELDS)
    finally:
        stop.set()
        thread.join()
    # Only what is recorded is checked: the figures themselves depend on the machine.
    assert result.iterations == 20 and result.p10_ms <= result.p50_ms <= result.p90_ms
    assert result.cv >= 0 and result.load_before is not None and result.load_after is not None


def test_only_other_processes_cpu_makes_a_timing_unreliable(monkeypatch):
    """This process's own threads (a 2-thread session on 2 cores) are no competition; other processes are."""
    import export.measure.benchmark as benchmark

    monkeypatch.setattr(benchmark, "usable_cores", lambda: 2)
    monkeypatch.setattr(benchmark, "load_per_core", lambda: 1.2)  # the load average counts our own threads
    steady = [1.0, 1.0, 1.1, 0.9, 1.0]
    before = (100.0, 10.0, 0.0)  # machine busy seconds, this process's, wall clock
    for after, others, unreliable in (((103.8, 13.6, 2.0), 0.1, False), ((104.0, 12.0, 2.0), 1.0, True)):
        monkeypatch.setattr(benchmark, "cpu_snapshot", lambda after=after: after)
        entry = benchmark.summarize(steady, 1.2, before, **FIELDS)
        assert (entry.other_cores, entry.unreliable) == (others, unreliable)
    monkeypatch.setattr(benchmark, "cpu_snapshot", lambda: None)  # no /proc/stat: the load average decides
    assert benchmark.summarize(steady, 1.2, before, **FIELDS).unreliable


def test_a_cpu_snapshot_counts_this_machines_cores_or_is_none():
    from export.measure.benchmark import cpu_snapshot

    snapshot = cpu_snapshot()
    assert snapshot is None or snapshot[0] >= snapshot[1] > 0  # the machine was at least as busy as this process
