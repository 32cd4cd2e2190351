"""Measured causes for the guardrail: ONNX Runtime's profiler, and what an ONNX file shows.

``op_times`` runs an artifact under ``SessionOptions.enable_profiling`` and sums kernel time by op
type (the profile goes to a temporary folder of modelpress's own, never the cwd). ``grown_ops``
names the op types whose time grew against a reference; ``file_hints`` reads the slower or larger
file for what a recipe can change: a table of checks, each ``(model, reference, record) -> hint``.
"""

import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from export.onnx.runtime import complete_feed

PROFILED_RUNS = 5  # after one untimed run: allocations and the first-run kernel choice stay out


def profiled_events(
    path: Path, inputs: dict[str, np.ndarray], providers: list[str], runs: int = 1, threads: int | None = None
) -> list[dict]:
    """The trace events of ``runs`` profiled runs of ``path`` (the profile file lives in a temporary
    folder of modelpress's own, never the cwd)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="modelpress-profile-") as folder:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        for _ in range(runs):
            session.run(None, complete_feed(session, inputs))
        return json.loads(Path(session.end_profiling()).read_text())


def op_times(path: Path, inputs: dict[str, np.ndarray], threads: int, runs: int = PROFILED_RUNS) -> dict[str, float]:
    """Milliseconds per run spent in each op type (as ONNX Runtime ran it: after fusion) on the CPU."""
    events = profiled_events(path, inputs, ["CPUExecutionProvider"], runs + 1, threads)
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    first_end = model_runs[0][1] if model_runs else -1
    totals: dict[str, float] = {}
    for event in events:
        op = event.get("args", {}).get("op_name")
        if event.get("cat") != "Node" or not op or not event["name"].endswith("_kernel_time"):
            continue
        if event["ts"] <= first_end:
            continue
        totals[op] = totals.get(op, 0.0) + event["dur"] / 1000 / runs
    return totals


def grown_ops(times: dict[str, float], reference: dict[str, float], top: int = 3) -> str:
    """The op types whose time grew most, then the largest op types (where the time goes, grown or
    not: a slowdown outside the big kernels is a finding too), each with its figures."""

    def figures(ops) -> str:
        return ", ".join(f"{op} {reference.get(op, 0.0):.3f} -> {times.get(op, 0.0):.3f} ms" for op in ops)

    deltas = {op: times.get(op, 0.0) - reference.get(op, 0.0) for op in {*times, *reference}}
    # A growth below 1% of the reference's kernel time is profiler jitter (it counts whole microseconds).
    floor = max(0.001, 0.01 * sum(reference.values()))
    grown = [op for op in sorted(deltas, key=deltas.get, reverse=True) if deltas[op] >= floor][:top]
    largest = [op for op in sorted(times, key=times.get, reverse=True)[:2] if op not in grown]
    text = f"op time grew (profiled, per run): {figures(grown)}" if grown else "no op type's time grew in the profile"
    return text + (f"; largest: {figures(largest)}" if largest else "")


def _weights(model) -> dict[str, list[int]]:
    """Weight shapes by the name a node reads them under: an initializer's own name, or the output of
    the DequantizeLinear that a QDQ file puts between an int8 initializer and its Conv."""
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in shapes:
            shapes[node.output[0]] = shapes[node.input[0]]
    return shapes


def odd_conv_widths(model) -> list[int]:
    """Output widths of the file's convolutions that are not multiples of 8 (their weights' first axis)."""
    weights = _weights(model)
    return [
        weights[n.input[1]][0]
        for n in model.graph.node
        if n.op_type == "Conv" and len(n.input) > 1 and n.input[1] in weights
        if weights[n.input[1]][0] % 8
    ]


def _odd_widths_hint(model, reference, record: dict) -> str | None:
    odd = odd_conv_widths(model)
    if len(odd) <= len(odd_conv_widths(reference)):
        return None
    shown = ", ".join(str(w) for w in sorted(set(odd))[:6])
    return (
        f"{len(odd)} Conv widths are not multiples of 8 ({shown}): ONNX Runtime's blocked (NCHWc) "
        "convolutions need them; prune with round_to: 8 in structured_prune"
    )


def _ops(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


def _float_conv_hint(model, reference, record: dict) -> str | None:
    # By weight mass, as scheme: auto decides: a ViT's one float patch Conv is not what keeps it large.
    ops = _ops(model)
    dynamic = "DynamicQuantizeLinear" in ops or record.get("scheme") == "int8_dynamic"
    if not dynamic or ops & {"ConvInteger", "QLinearConv"} or _float_shares(model).get("Conv", 0.0) < 0.5:
        return None
    return "int8_dynamic left the convolutions in float (Conv nodes, no ConvInteger/QLinearConv); use int8_static"


# Ops whose QDQ pairs ONNX Runtime's CPU provider folds into an int8 kernel (or passes through);
# a DequantizeLinear feeding anything else runs as float between two conversions.
QDQ_FUSED = {
    "Conv", "MatMul", "Gemm", "Add", "Mul", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
    "Concat", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Sigmoid", "LeakyRelu", "Resize",
    "Gather", "Softmax", "Split", "Pad", "Where", "ArgMax", "QuantizeLinear",
}  # fmt: skip


def _unfused_qdq_hint(model, reference, record: dict) -> str | None:
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    unfused = sorted({n.op_type for n in model.graph.node if n.op_type not in QDQ_FUSED and dequantized & set(n.input)})
    if not unfused:
        return None
    return f"QDQ pairs around ops that stay float ({', '.join(unfused)}): leave them out with exclude_ops"


def _nbits_level_hint(model, reference, record: dict) -> str | None:
    levels = [
        next((a.i for a in n.attribute if a.name == "accuracy_level"), 0)
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
    ]
    slow = sorted({level for level in levels if level < 4})
    if not slow:
        return None
    share = f"{sum(level < 4 for level in levels)} of {len(levels)} MatMulNBits"
    why = record.get("accuracy_levels", {}).get("reason")
    chosen = f" (chosen for top-1: {why})" if why else "; set accuracy_level: 4"
    return f"{share} at accuracy_level {', '.join(map(str, slow))} compute in fp32 (dequantized weights){chosen}"


# What a file shows -> what to change. Every applicable hint is named; none is templated by scheme.
FILE_HINTS: dict[str, Callable] = {
    "odd_conv_widths": _odd_widths_hint,
    "float_conv": _float_conv_hint,
    "unfused_qdq": _unfused_qdq_hint,
    "nbits_accuracy_level": _nbits_level_hint,
}


def file_hints(path: Path, reference_path: Path, record: dict) -> dict[str, str]:
    """``hint name -> text`` for every check in ``FILE_HINTS`` that the file at ``path`` meets."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    reference = onnx.load(str(reference_path), load_external_data=False)
    hints = {name: check(model, reference, record) for name, check in FILE_HINTS.items()}
    return {name: text for name, text in hints.items() if text}


FLOAT_TYPES = (1, 10, 11, 16)  # float, float16, double, bfloat16


def _float_shares(model) -> dict[str, float]:
    """Share of all weight elements held in float by each op type that reads them."""
    floats = {i.name: math.prod(i.dims) for i in model.graph.initializer if i.data_type in FLOAT_TYPES}
    total = sum(math.prod(i.dims) for i in model.graph.initializer) or 1
    by_op: dict[str, float] = {}
    for node in model.graph.node:
        for name in node.input:
            by_op[node.op_type] = by_op.get(node.op_type, 0.0) + floats.pop(name, 0) / total
    return by_op


def float_weight_shares(path: Path, top: int = 2) -> str:
    """Which op types hold the file's float weights: what kept it large."""
    import onnx

    shares = _float_shares(onnx.load(str(path), load_external_data=False))
    shown = sorted((op for op, share in shares.items() if share >= 0.01), key=shares.get, reverse=True)[:top]
    return "float weights: " + ", ".join(f"{op} {shares[op]:.0%}" for op in shown) if shown else ""
