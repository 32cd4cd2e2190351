"""The benchmark harness: build each row, then measure all rows alike, in one run.

A row is a compressed model (an ONNX file or a torch module) plus the time it took to
make. Every row is scored on the same held-out data, and timed at the same batch sizes
and thread count with the rows taking turns in rounds, so that load on a shared machine
hits all of them alike. Results are reported as ratios against a reference row: the suite's
first row, or the row a row names as its ``reference`` (a pruned model against its own fp32).
"""

import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.core.io import write_json_atomic, write_text_atomic
from compress.models.data import take_rows
from compress.models.evaluate import Evaluator, torch_predictor
from export.measure.benchmark import warm
from export.onnx.runtime import default_threads, feed, make_session, ort_predictor


@dataclass
class Row:
    """One measured candidate: ``onnx`` path or ``module``, who made it, and how long it took."""

    name: str
    tool: str
    compress_seconds: float
    onnx: Path | None = None
    module: torch.nn.Module | None = None
    note: str = ""
    reference: str | None = None  # the row its ratios are against; None: the suite's first row
    results: dict[str, Any] = field(default_factory=dict)

    def size_bytes(self) -> int:
        if self.onnx is not None:
            return self.onnx.stat().st_size
        buffer = io.BytesIO()
        torch.save(self.module.state_dict(), buffer)
        return buffer.getbuffer().nbytes


def timed(build: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = build()
    return value, time.perf_counter() - start


def _runner(row: Row, threads: int):
    """(predict, call_on_batch) for a row."""
    if row.onnx is not None:
        session = make_session(row.onnx, threads)
        return ort_predictor(session), lambda inputs: session.run(None, feed(inputs))
    predict = torch_predictor(row.module)
    return predict, predict


def measure(
    rows: list[Row],
    evaluator: Evaluator,
    eval_batches: list,
    sample: Any,
    batch_sizes: list[int],
    rounds: int,
    calls_per_round: dict[int, int],
    threads: int | None = None,
) -> None:
    """Fill ``row.results``: metric, size, and median latency per batch size (rows take turns)."""
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    runners = {row.name: _runner(row, threads) for row in rows}
    for row in rows:
        predict, _ = runners[row.name]
        row.results = {"metric": evaluator.score(predict, eval_batches), "size_bytes": row.size_bytes()}
    for batch_size in batch_sizes:
        inputs = take_rows(sample, batch_size)
        times = {row.name: [] for row in rows}
        for _, call in runners.values():
            with torch.no_grad():
                call(inputs)  # warm-up
        for _ in range(rounds):
            for row in rows:
                call, count = runners[row.name][1], calls_per_round[batch_size]
                with torch.no_grad():
                    warm(lambda c=call, i=inputs: c(i))
                    start = time.perf_counter()
                    for _ in range(count):
                        call(inputs)
                times[row.name].append((time.perf_counter() - start) * 1000 / count)
        for row in rows:
            row.results[f"bs{batch_size}_ms"] = statistics.median(times[row.name])
    for row in rows:
        row.results["threads"] = threads


def _notes(row: Row) -> list[str]:
    return [
        text
        for text in (row.note, row.reference not in (None, row.name) and f"ratios against `{row.reference}`")
        if text
    ]


def write_results(suite: str, rows: list[Row], metric_name: str, out_dir: Path, context: dict) -> Path:
    """reports/benchmarks/<suite>.json and .md, with ratios against each row's reference row."""
    by_name = {r.name: r for r in rows}
    batch_keys = [k for k in rows[0].results if k.startswith("bs")]
    body = {
        "suite": suite,
        "metric": metric_name,
        **context,
        "rows": [
            {
                "name": r.name,
                "tool": r.tool,
                "compress_seconds": round(r.compress_seconds, 2),
                "note": r.note,
                "reference": r.reference or rows[0].name,
                **r.results,
            }
            for r in rows
        ],
    }
    lines = [
        f"# Benchmark: {suite}",
        "",
        *(f"- {key}: {value}" for key, value in context.items()),
        f"- ratios and Δ: against `{rows[0].name}`, or the reference a row's note names",
        "",
        f"| row | tool | {metric_name} | Δ vs reference | size (MB) | size ratio | "
        + " | ".join(f"{k.removesuffix('_ms')} ms (ratio)" for k in batch_keys)
        + " | compress (s) |",
        "|---|---|---|---|---|---|" + "---|" * len(batch_keys) + "---|",
    ]
    for r in rows:
        res, base = r.results, by_name[r.reference or rows[0].name].results
        latencies = " | ".join(f"{res[k]:.2f} ({res[k] / base[k]:.2f}×)" for k in batch_keys)
        lines.append(
            f"| {r.name} | {r.tool} | {res['metric']:.3f} | {res['metric'] - base['metric']:+.3f} "
            f"| {res['size_bytes'] / 1e6:.2f} | {res['size_bytes'] / base['size_bytes']:.3f}× | {latencies} "
            f"| {r.compress_seconds:.1f} |"
        )
    notes = [f"- **{r.name}**: " + "; ".join(_notes(r)) for r in rows if _notes(r)]
    lines += ["", *notes, ""] if notes else [""]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / f"{suite}.md", "\n".join(lines))
    return write_json_atomic(out_dir / f"{suite}.json", json.loads(json.dumps(body, default=str)))
