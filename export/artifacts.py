"""Export, verify and measure the artifacts of a run, one JSON record per artifact.

``export_artifacts`` writes ``artifacts/<name>.onnx`` and ``<name>.json`` (parity
included); ``measure_artifacts`` adds the metric measured in ONNX Runtime and the
latency. A failed export or parity check is recorded in the artifact, not hidden.
"""

import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from compress import log
from compress.data import TaskData
from compress.errors import ModelpressError
from compress.evaluate import Evaluator
from compress.io import read_json, write_json_atomic
from compress.recipe import Recipe
from export.benchmark import benchmark_sessions
from export.guardrail import flag_slow_or_large
from export.onnx_export import to_onnx
from export.runtime import default_threads, make_session, ort_predictor
from export.validate import compare_outputs


def heldout_inputs(evaluator: Evaluator, data: TaskData) -> Iterator[Any]:
    """Model inputs of the held-out (eval) batches, one batch of inputs at a time."""
    for batch in data.batches("eval"):
        yield from evaluator.inputs_of(batch)


def file_facts(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    return {
        "size_bytes": len(raw),
        "size_gzip_bytes": len(gzip.compress(raw, compresslevel=9, mtime=0)),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


def artifacts_dir(out_dir: Path) -> Path:
    return out_dir / "artifacts"


def export_artifacts(
    out_dir: Path,
    models: dict[str, tuple[torch.nn.Module, str]],
    recipe: Recipe,
    evaluator: Evaluator,
    data: TaskData,
    example_inputs: Any,
) -> list[dict]:
    """Export each ``name -> (model, source stage)`` and check its parity; return the records."""
    records = []
    for name, (model, source_stage) in models.items():
        path = artifacts_dir(out_dir) / f"{name}.onnx"
        record = {
            "name": name,
            "path": str(path.relative_to(out_dir)),
            "format": "onnx",
            "precision": "fp32",
            "source_stage": source_stage,
            "opset": recipe.export.opset,
        }
        log.info(f"export {name} -> {path}")
        try:
            onnx_model = to_onnx(
                model, example_inputs, path, recipe.export.opset, recipe.export.dynamic_batch, recipe.export.output_name
            )
            record.update(input_names=onnx_model.input_names, output_names=onnx_model.output_names)
            record.update(file_facts(path))
            session = make_session(path)
            parity = compare_outputs(
                model, session, heldout_inputs(evaluator, data), recipe.export.parity, evaluator.is_classifier
            )
            record["parity"] = parity.to_dict()
            record["status"] = "passed" if parity.passed else "failed"
            if not parity.passed:
                record["error"] = "parity failed: " + "; ".join(parity.failures)
        except ModelpressError as exc:
            record.update(status="failed", error=str(exc))
        level = log.info if record["status"] == "passed" else log.warn
        level(f"  {name}: {record['status']}" + (f" ({record['error']})" if "error" in record else ""))
        write_json_atomic(artifacts_dir(out_dir) / f"{name}.json", record)
        records.append(record)
    return records


def read_artifacts(out_dir: Path) -> list[dict]:
    return [r for p in sorted(artifacts_dir(out_dir).glob("*.json")) if (r := read_json(p))]


def measure_artifacts(out_dir: Path, recipe: Recipe, evaluator: Evaluator, data: TaskData) -> list[dict]:
    """Add metric (run in ONNX Runtime) and CPU latency to every exported artifact record."""
    records = read_artifacts(out_dir)
    threads = recipe.report.threads or default_threads()
    sample = next(heldout_inputs(evaluator, data))
    measured = [r for r in records if "size_bytes" in r and (out_dir / r["path"]).is_file()]
    sessions = {}
    for record in measured:
        session = sessions[record["name"]] = make_session(out_dir / record["path"], threads)
        value = evaluator.score(ort_predictor(session), data.batches("eval"))
        record["metric"] = {"name": evaluator.name, "value": value, "runtime": "onnxruntime"}
    spec = recipe.report
    latency = benchmark_sessions(
        sessions, sample, spec.batch_sizes, threads, spec.warmup, spec.iterations, spec.max_seconds
    )
    for record in measured:
        record["latency"] = [entry.to_dict() for entry in latency[record["name"]]]
        summary = ", ".join(f"bs{e.batch_size} p50 {e.p50_ms:.2f} ms" for e in latency[record["name"]])
        log.info(f"measure {record['name']}: {evaluator.name} {record['metric']['value']:.4f}; {summary}")
    flag_slow_or_large(records)
    for record in records:
        for warning in record.get("warnings", []):
            log.warn(f"{record['name']}: {warning}")
        write_json_atomic(artifacts_dir(out_dir) / f"{record['name']}.json", record)
    return records
