"""Export, verify and measure the artifacts of a run, one JSON record per artifact.

``export_artifacts`` writes ``artifacts/<name>.onnx`` and ``<name>.json`` (parity
included); ``convert_to_ort`` adds ORT-format files; ``measure_torch_sources`` times the
torch modules; ``measure_artifacts`` adds the metric measured in ONNX Runtime, the latency per
provider and the providers' support. A failed export or parity check is recorded, not hidden.
"""

import copy
import gzip
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from compress.core import log
from compress.core.errors import ModelpressError
from compress.core.io import read_json, write_json_atomic
from compress.core.progress import progress
from compress.core.untrusted import open_read, regular
from compress.models.data import TaskData, flatten_inputs, take_rows
from compress.models.evaluate import Evaluator
from compress.recipe.schema import Recipe
from export.measure.benchmark import benchmark_sessions, merge_latency
from export.measure.edge import merge_support, provider_support, to_ort_format
from export.measure.guardrail import flag_artifacts
from export.onnx.exporter import default_opset, export_onnx
from export.onnx.runtime import default_threads, feed, file_batch_size, make_session, ort_predictor
from export.onnx.validate import compare_outputs
from export.runfolder.language import score_language


def heldout_inputs(evaluator: Evaluator, data: TaskData) -> Iterator[Any]:
    """Model inputs of the held-out (eval) batches, one batch of inputs at a time."""
    for batch in data.batches("eval"):
        yield from evaluator.inputs_of(batch)


def file_facts(path: Path) -> dict[str, Any]:
    """Size (with the external-data file, when there is one), gzip size and sha256 of an artifact."""
    with open_read(path, "ONNX artifact") as handle:  # no link, no FIFO: the folder may come from elsewhere
        raw = handle.read()
    facts = {"sha256": hashlib.sha256(raw).hexdigest()}
    data = path.with_name(path.name + ".data")
    if regular(data, "external data file") is not None:
        with open_read(data, "external data file") as handle:
            external = handle.read()
        facts["external_data"] = {"path": data.name, "sha256": hashlib.sha256(external).hexdigest()}
        raw += external
    gzip_bytes = len(gzip.compress(raw, compresslevel=9, mtime=0))
    return {"size_bytes": len(raw), "size_gzip_bytes": gzip_bytes, **facts}


def _dims(value_info) -> list:
    """A tensor's shape as written: ints for fixed axes, names for dynamic ones."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def graph_facts(path: Path) -> dict[str, Any]:
    """What the written ONNX file says of itself, never what the recipe asked: opset, input and
    output names and shapes, op counts (``domain::op`` for non-default domains) and weight dtypes."""
    import onnx

    with open_read(path, "ONNX artifact") as handle:
        model = onnx.load_model_from_string(handle.read())
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    ops: dict[str, int] = {}
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        ops[key] = ops.get(key, 0) + 1
    dtypes: dict[str, int] = {}
    for init in graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        dtypes[name] = dtypes.get(name, 0) + 1
    return {
        "opset": default_opset(model),
        "input_names": [i.name for i in graph.input if i.name not in weights],
        "output_names": [o.name for o in graph.output],
        "input_shapes": {i.name: _dims(i) for i in graph.input if i.name not in weights},
        "output_shapes": {o.name: _dims(o) for o in graph.output},
        "op_counts": dict(sorted(ops.items())),
        "initializer_dtypes": dict(sorted(dtypes.items())),
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
            "requested_opset": recipe.export.opset,
        }
        log.info(f"export {name} -> {path}")
        try:
            spec = recipe.export
            with progress(f"exporting {name}"):
                _, made_by = export_onnx(
                    model,
                    example_inputs,
                    path,
                    spec.opset,
                    spec.dynamic_batch,
                    spec.output_name,
                    exporter=spec.exporter,
                    kv_cache=spec.kv_cache,
                    decoder_graph=spec.decoder_graph,
                    external_data=spec.external_data,
                )
            record.update(made_by)
            if "exporter_fallback" in made_by:
                log.warn(f"  {name}: exported with TorchScript ({made_by['exporter_fallback']})")
            if "decoder_graph_fallback" in made_by:
                log.info(f"  {name}: torch's decoder graph ({made_by['decoder_graph_fallback']})")
            record.update(graph_facts(path), **file_facts(path))
            session = make_session(path)
            with progress(f"checking {name} against torch"):
                parity = compare_outputs(
                    model, session, heldout_inputs(evaluator, data), recipe.export.parity, evaluator.is_classifier
                )
            record["parity"] = parity.to_dict()
            failures = list(parity.failures)
            if made_by.get("kv_cache"):  # the file generates: its decoding steps are checked too
                record["generation_parity"] = _decoding_parity(model, session, evaluator, data)
                if not record["generation_parity"]["within_tolerance"]:
                    failures.append("decoding steps differ from torch beyond tolerance")
            record["status"] = "passed" if not failures else "failed"
            if failures:
                record["error"] = "parity failed: " + "; ".join(failures)
        except ModelpressError as exc:
            record.update(status="failed", error=str(exc))
        records.append(save_record(out_dir, record))
    return records


def save_record(out_dir: Path, record: dict) -> dict:
    """Say how an artifact ended (a failure as a warning, which the report shows from the record) and
    write its record beside it."""
    outcome = f"  {record['name']}: {record['status']}" + (f" ({record['error']})" if "error" in record else "")
    if record["status"] == "passed":
        log.info(outcome)
    else:
        log.warn(outcome, collect=False)
    write_json_atomic(artifacts_dir(out_dir) / f"{record['name']}.json", record)
    return record


def _decoding_parity(model, session, evaluator: Evaluator, data: TaskData) -> dict:
    """Prefill and 4 greedy steps of the decoder against torch, on the first held-out prompts."""
    from export.decoder.parity import decoding_parity

    inputs = next(iter(heldout_inputs(evaluator, data)))
    return decoding_parity(model, session, inputs)


def read_artifacts(out_dir: Path) -> list[dict]:
    return [r for p in sorted(artifacts_dir(out_dir).glob("*.json")) if (r := read_json(p))]


def _providers_to_time() -> list[str]:
    """ONNX Runtime CPU always; its CUDA provider where onnxruntime-gpu and a CUDA device are present."""
    import onnxruntime as ort
    import torch

    cuda = "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()
    return ["CPUExecutionProvider", *(["CUDAExecutionProvider"] if cuda else [])]


def _batch_sizes(recipe: Recipe) -> list[int]:
    """The report's batch sizes; the one fixed batch size when the artifacts have fixed input shapes."""
    return recipe.report.batch_sizes if recipe.export.dynamic_batch else [recipe.export.fixed_batch_size]


def measure_artifacts(
    out_dir: Path, recipe: Recipe, evaluator: Evaluator, data: TaskData, unscored: str | None = None
) -> list[dict]:
    """Add the metric (run in ONNX Runtime), latency per provider and provider support to every artifact.

    Latency entries of other machines (an earlier run on a GPU box, say) and of torch are kept;
    those this machine measures again are replaced (``modelpress report`` marks every old entry
    ``stale`` first, so the kept ones say that they were not measured again). ``unscored`` (why
    the metric cannot be scored here, e.g. custom code not trusted) drops the old metric and says
    so in every record's warnings.
    """
    records = read_artifacts(out_dir)
    threads = recipe.report.threads or default_threads()
    sample = next(heldout_inputs(evaluator, data))
    measured = [r for r in records if "size_bytes" in r and (out_dir / r["path"]).is_file()]
    spec = recipe.report
    for provider in _providers_to_time():
        sessions = {r["name"]: make_session(out_dir / r["path"], threads, provider) for r in measured}
        for record in measured if provider == "CPUExecutionProvider" else []:
            if unscored:
                record.pop("metric", None)  # an old figure would pass for a measured one
                continue
            value = evaluator.score(ort_predictor(sessions[record["name"]]), data.batches("eval"))
            record["metric"] = {
                "name": evaluator.name,
                "value": value,
                "runtime": "onnxruntime",
                "higher_is_better": evaluator.higher_is_better,
            }
        with progress(f"timing {len(sessions)} artifacts in {provider}, batch sizes {_batch_sizes(recipe)}"):
            latency = benchmark_sessions(
                sessions, sample, _batch_sizes(recipe), threads, spec.warmup, spec.iterations, spec.max_seconds
            )
        for record in measured:
            new = [entry.to_dict() for entry in latency[record["name"]]]
            record["latency"] = merge_latency(record.get("latency", []), new)
            summary = ", ".join(f"bs{e['batch_size']} p50 {e['p50_ms']:.2f} ms" for e in new)
            value = f"{record['metric']['value']:.4f}" if "metric" in record else "not scored"
            log.info(f"measure {record['name']} ({provider}): {evaluator.name} {value}; {summary}")
    for record in records:  # a figure not measured again below is not shown
        record.pop("language", None)
    if not unscored:
        score_language(out_dir, recipe, evaluator, data, measured)
    for record in measured:
        # One batch of the size the file takes: a fixed-shape file refuses any other row count.
        rows = file_batch_size(out_dir / record["path"]) or int(flatten_inputs(sample)[1][0].shape[0])
        check = provider_support(out_dir / record["path"], recipe.export.check_providers, feed(take_rows(sample, rows)))
        record["provider_support"] = merge_support(record.get("provider_support", []), check)
    flag_artifacts(records, out_dir, sample)
    for record in measured if unscored else []:
        record["warnings"].append(f"metric not re-measured: {unscored}")
    for record in records:
        for warning in record.get("warnings", []):
            log.warn(f"{record['name']}: {warning}", collect=False)  # the report derives these itself
        write_json_atomic(artifacts_dir(out_dir) / f"{record['name']}.json", record)
    return records


def measure_torch_sources(
    out_dir: Path, models: dict[str, torch.nn.Module], recipe: Recipe, evaluator: Evaluator, data: TaskData
) -> None:
    """Latency of each artifact's torch source in torch (CPU, and CUDA when present), kept in its record:
    the torch-side variants (bitsandbytes layers) are only measured here, while the modules exist."""
    from export.measure.benchmark import benchmark_torch

    sample = next(heldout_inputs(evaluator, data))
    threads = recipe.report.threads or default_threads()
    spec = recipe.report
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    for name, model in models.items():
        record = read_json(artifacts_dir(out_dir) / f"{name}.json")
        if record is None:
            continue
        new = []
        for device in devices:
            # A copy goes to the GPU: the caller's module stays as it is, on the CPU.
            source = model if device == "cpu" else copy.deepcopy(model)
            try:
                entries = benchmark_torch(
                    source,
                    sample,
                    _batch_sizes(recipe),
                    threads,
                    device,
                    spec.warmup,
                    spec.iterations,
                    spec.max_seconds,
                )
            except RuntimeError as exc:  # e.g. layers quantized for CPU kernels that CUDA cannot take as they are
                log.warn(f"{name}: torch latency on {device} not measured: {str(exc).splitlines()[0]}")
                continue
            new += [entry.to_dict() for entry in entries]
        record["latency"] = merge_latency(record.get("latency", []), new)
        write_json_atomic(artifacts_dir(out_dir) / f"{name}.json", record)


def convert_to_ort(out_dir: Path, recipe: Recipe) -> list[dict]:
    """``.ort`` files (and required-operators configs) for every passed artifact; return the records."""
    records = read_artifacts(out_dir)
    for record in records:
        if record.get("status") != "passed" or record.get("format") != "onnx":
            continue
        try:
            record["ort_format"] = {
                "status": "passed",
                **to_ort_format(out_dir / record["path"], recipe.export.ort_optimization),
            }
            log.info(f"ort format {record['name']}: {record['ort_format']['path']}")
        except ModelpressError as exc:
            record["ort_format"] = {"status": "failed", "error": str(exc)}
            log.warn(str(exc))
        write_json_atomic(artifacts_dir(out_dir) / f"{record['name']}.json", record)
    return records
