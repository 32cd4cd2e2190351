"""Generation benchmark: time to first token, decode tokens/s and peak resident memory of decoder rows.

A row is a torch fp32 model folder (``save_pretrained``; a manual greedy loop over its own cache),
an exported decoder-with-past in ONNX Runtime (IO fed by hand) or an onnxruntime-genai folder
(``og.Generator``). Each row runs in a fresh process of its own (``generation_worker.py``), for
the whole run: its peak resident memory is that process's ``VmHWM`` from /proc/self/status, read
when it exits (``getrusage(RUSAGE_CHILDREN)`` would give only the largest child, not each row's).
It is the high-water mark over all batch sizes measured, and includes the row's runtime import
(reported alone as ``rss_after_import_mb``, with ``rss_after_load_mb`` after the model load).

Timing follows ``export/measure/benchmark.py``: one intra-op thread count for all rows, an untimed
warm-up generation per row, then ``rounds`` rounds in which every row generates once (the order
rotating each round, so no row always follows the same neighbour); medians with their p10-p90
spread, a figure marked ``unreliable`` past ``MAX_SPREAD`` or when other processes took more than
``MAX_OTHER_SHARE`` of the cores (the workers' own CPU seconds are not counted as others), and ratios
against the baseline row measured in the same run. Rows are bounded by token counts, not seconds:
every generation is a ``prompt_tokens`` prompt and exactly ``new_tokens`` greedy tokens.
TTFT is the prefill and the first token's choice; decode tokens/s counts the remaining
``new_tokens - 1`` steps of all rows of the batch.
"""

import datetime
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.recipe.schema import usable_cores
from export.decoder.perplexity import greedy_agreement
from export.measure.benchmark import MAX_OTHER_SHARE, MAX_SPREAD, cpu_snapshot, load_per_core, other_cores_since
from export.measure.environment import device_name

WORKER = Path(__file__).with_name("generation_worker.py")
RUNTIMES = {"torch": ("torch", "torch-cpu"), "onnx": ("onnxruntime", "CPUExecutionProvider")}
RUNTIMES["genai"] = ("onnxruntime-genai", "CPUExecutionProvider")


@dataclass(frozen=True)
class GenerationRow:
    """``kind``: ``torch`` (a save_pretrained folder), ``onnx`` (a decoder-with-past file) or ``genai`` (a folder)."""

    name: str
    kind: str
    path: Path
    note: str = ""


@dataclass
class GenerationFigures:
    """One row at one batch size."""

    row: str
    kind: str
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    rounds: int
    threads: int
    ttft_ms: float
    ttft_p10_ms: float
    ttft_p90_ms: float
    decode_tokens_per_s: float
    decode_p10_tokens_per_s: float
    decode_p90_tokens_per_s: float
    decode_step_ms: list[float]  # per round: ms per decode step (the guardrail's latency)
    greedy_agreement: float  # share of tokens before the first divergence from the baseline row's
    unreliable: bool
    ttft_ratio: float = 1.0  # against the baseline row at this batch size (< 1: faster)
    decode_ratio: float = 1.0  # tokens/s against the baseline (> 1: faster)
    peak_rss_mb: float = 0.0
    rss_after_import_mb: float = 0.0
    rss_after_load_mb: float = 0.0


@dataclass
class GenerationReport:
    baseline: str
    figures: list[GenerationFigures]
    device_name: str
    load_before: float | None
    load_after: float | None
    other_cores: dict[int, float | None] = field(default_factory=dict)  # batch size -> cores others used
    measured_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def get(self, row: str, batch_size: int) -> GenerationFigures:
        return next(f for f in self.figures if f.row == row and f.batch_size == batch_size)


class Worker:
    """A row's process: started once, asked to generate, asked for its peak memory at the end."""

    def __init__(self, row: GenerationRow, threads: int):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        spec = json.dumps({"kind": row.kind, "path": str(row.path), "threads": threads})
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), spec], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.started = self._read(row.name)
        self.name = row.name

    def _read(self, name: str) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"generation worker for {name!r} exited with {self.process.wait()}")
        return json.loads(line)

    def ask(self, command: dict) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read(self.name)

    def close(self) -> float:
        """The worker's peak resident memory (MiB), after which it exits."""
        try:
            return float(self.ask({"quit": True})["peak_rss_mb"])
        finally:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def prompt_ids(batch_size: int, prompt_tokens: int, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """Seeded prompt ids, the same for every row (ids below 3 left out: pad, bos and eos in most vocabularies)."""
    return np.random.default_rng(seed).integers(3, vocab_size, (batch_size, prompt_tokens)).tolist()


def _spread(values: list[float]) -> tuple[float, float, float]:
    p10, p50, p90 = (float(np.percentile(values, q)) for q in (10, 50, 90))
    return round(p50, 4), round(p10, 4), round(p90, 4)


def _timed_rounds(workers: dict[str, Worker], command: dict, rounds: int) -> tuple[dict[str, list[dict]], float]:
    """Every worker generates once per round (untimed warm-up first); returns the answers and the CPU
    seconds the workers used, to tell other processes' load apart."""
    for worker in workers.values():
        worker.ask(command)
    answers: dict[str, list[dict]] = {name: [] for name in workers}
    names = list(workers)
    for index in range(rounds):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            answers[name].append(workers[name].ask(command))
    return answers, sum(a["cpu_s"] for rows in answers.values() for a in rows)


def _figures(
    row: GenerationRow, answers: list[dict], reference: list[list[int]], batch: int, **fields
) -> GenerationFigures:
    steps = fields["new_tokens"] - 1
    ttft = _spread([a["ttft_s"] * 1000 for a in answers])
    rates = _spread([batch * steps / a["decode_s"] for a in answers])
    spread = max((ttft[2] - ttft[1]) / ttft[0], (rates[2] - rates[1]) / rates[0])
    agreement = greedy_agreement(torch.tensor(answers[0]["tokens"]), torch.tensor(reference))
    return GenerationFigures(
        row=row.name, kind=row.kind, batch_size=batch, rounds=len(answers),
        ttft_ms=ttft[0], ttft_p10_ms=ttft[1], ttft_p90_ms=ttft[2],
        decode_tokens_per_s=rates[0], decode_p10_tokens_per_s=rates[1], decode_p90_tokens_per_s=rates[2],
        decode_step_ms=[round(a["decode_s"] * 1000 / steps, 4) for a in answers],
        greedy_agreement=agreement, unreliable=spread > MAX_SPREAD, **fields,
    )  # fmt: skip


def benchmark_generation(
    rows: list[GenerationRow],
    vocab_size: int,
    batch_sizes: tuple[int, ...] = (1, 4),
    prompt_tokens: int = 32,
    new_tokens: int = 32,
    rounds: int = 5,
    threads: int = 1,
    baseline: str | None = None,
) -> GenerationReport:
    """Measure every row at every batch size, rows taking turns (see the module docstring)."""
    if new_tokens < 2:
        raise ValueError("new_tokens must be at least 2: decode speed is timed over the tokens after the first")
    baseline = baseline or rows[0].name
    by_name = {row.name: row for row in rows}
    report = GenerationReport(baseline, [], device_name("cpu"), load_per_core(), None)
    workers = {row.name: Worker(row, threads) for row in rows}
    try:
        for batch in batch_sizes:
            command = {"prompt": prompt_ids(batch, prompt_tokens, vocab_size), "new_tokens": new_tokens}
            before = cpu_snapshot()
            answers, workers_cpu = _timed_rounds(workers, command, rounds)
            report.other_cores[batch] = others = other_cores_since(before, workers_cpu)
            loaded = others is not None and others > MAX_OTHER_SHARE * usable_cores()
            reference = answers[baseline][0]["tokens"]
            fields = dict(prompt_tokens=prompt_tokens, new_tokens=new_tokens, threads=threads)
            for name, rows_answers in answers.items():
                figures = _figures(by_name[name], rows_answers, reference, batch, **fields)
                figures.unreliable |= loaded
                report.figures.append(figures)
    finally:
        peaks = {name: worker.close() for name, worker in workers.items()}
    for figures in report.figures:
        base = report.get(baseline, figures.batch_size)
        figures.ttft_ratio = round(figures.ttft_ms / base.ttft_ms, 4)
        figures.decode_ratio = round(figures.decode_tokens_per_s / base.decode_tokens_per_s, 4)
        started = workers[figures.row].started
        figures.peak_rss_mb = round(peaks[figures.row], 1)
        figures.rss_after_import_mb = round(started["rss_after_import_mb"], 1)
        figures.rss_after_load_mb = round(started["rss_after_load_mb"], 1)
    report.load_after = load_per_core()
    report.measured_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return report


def latency_entries(report: GenerationReport, row: str) -> list[dict]:
    """A row's decode speed as ``benchmark.Latency``-shaped entries (ms per decode step), the form
    ``guardrail.flag_artifacts`` compares artifacts in."""
    entries = []
    for figures in (f for f in report.figures if f.row == row):
        runtime, provider = RUNTIMES[figures.kind]
        p50, p10, p90 = _spread(figures.decode_step_ms)
        entries.append(
            {
                "device": "cpu", "device_name": report.device_name, "runtime": runtime, "provider": provider,
                "batch_size": figures.batch_size, "threads": figures.threads, "iterations": figures.rounds,
                "p50_ms": p50, "p10_ms": p10, "p90_ms": p90, "unreliable": figures.unreliable,
                "measured_at": report.measured_at, "what": "ms per decode step",
            }
        )  # fmt: skip
    return entries


def markdown_table(report: GenerationReport) -> list[str]:
    """The report as markdown table lines, ratios against its baseline row."""
    lines = [
        "| row | batch | TTFT ms (p10-p90) | TTFT ratio | decode tok/s (p10-p90) | decode ratio | greedy agreement "
        "| peak RSS MiB (after import / load) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in report.figures:
        mark = " ⚠ unreliable" if f.unreliable else ""
        lines.append(
            f"| {f.row}{mark} | {f.batch_size} | {f.ttft_ms:.2f} ({f.ttft_p10_ms:.2f}-{f.ttft_p90_ms:.2f}) "
            f"| {f.ttft_ratio:.2f}× | {f.decode_tokens_per_s:.1f} ({f.decode_p10_tokens_per_s:.1f}-"
            f"{f.decode_p90_tokens_per_s:.1f}) | {f.decode_ratio:.2f}× | {f.greedy_agreement:.3f} "
            f"| {f.peak_rss_mb:.0f} ({f.rss_after_import_mb:.0f} / {f.rss_after_load_mb:.0f}) |"
        )
    return lines
