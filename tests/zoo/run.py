"""One generic run per zoo architecture: prune 30% (+ a quarter of the heads) -> export -> parity; int8 -> parity.

No per-model option: every row goes through the same calls, and the outcome (or the first
stage that failed, with its one-line reason) is returned as data for the test and the table.
"""

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch

from compress.core.errors import ModelpressError
from compress.engine.context import Context
from compress.engine.metrics import count_params
from compress.models.blocks import without_nested_tensor_fast_path
from compress.models.data import TaskData, call_model, first_tensor, flatten_inputs
from compress.passes.quantize import OnnxQuantSpec
from compress.passes.structured_prune import StructuredPruneConfig, structured_prune
from export.onnx.exporter import export_onnx
from export.quantize.onnx_quant import SCHEMES, resolve_scheme
from tests.zoo.archs import ATTENTION_FAMILIES, ZOO, build, example_inputs

RATIO, HEAD_RATIO = 0.3, 0.25
FP32_ATOL = 1e-4
INT8_MIN_COSINE = 0.9


def _onnx_output(path: Path, inputs) -> np.ndarray:
    from export.onnx.runtime import make_session

    names, tensors = flatten_inputs(inputs)
    return make_session(path).run(None, {n: t.numpy() for n, t in zip(names, tensors)})[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def run(name: str, head_ratio: float | None = None) -> dict:
    """Prune, export and quantize ``name``; the facts, or the stage that failed and why. ``head_ratio``:
    instead of the family's default (a refusal's fix, pasted back)."""
    family = ZOO[name][0]
    model, inputs = build(name), example_inputs(name)
    without_nested_tensor_fast_path(model)  # as run_pipeline does before any pass
    if head_ratio is None:
        head_ratio = HEAD_RATIO if family in ATTENTION_FAMILIES else 0.0
    config = StructuredPruneConfig(ratio=RATIO, head_ratio=head_ratio)
    result = {"name": name, "family": family, "params_before": count_params(model)}
    stage = "prune"
    try:
        ctx = Context(TaskData(eval=[(inputs, None)]), inputs, copy.deepcopy(model), None)
        model = structured_prune(model, config, ctx)
        heads = sum(map(len, ctx.facts["removed_heads"].values()))
        result.update(params_after=count_params(model), heads_removed=heads, group_search=ctx.facts["group_search"])
        with torch.no_grad():
            expected = first_tensor(call_model(model, inputs)).numpy()
        with tempfile.TemporaryDirectory(prefix="modelpress-zoo-") as scratch:
            stage, fp32 = "export", Path(scratch) / "fp32.onnx"
            _, made_by = export_onnx(model, inputs, fp32)
            result["exporter"] = made_by["exporter"]
            stage = "parity"
            result["max_abs_diff"] = float(np.abs(_onnx_output(fp32, inputs) - expected).max())
            if result["max_abs_diff"] > FP32_ATOL:
                raise ModelpressError(f"ONNX differs from torch by {result['max_abs_diff']:.2e} > {FP32_ATOL}")
            stage, int8 = "int8", Path(scratch) / "int8.onnx"
            spec = OnnxQuantSpec(calibration={"samples": 2})
            import onnx

            result["scheme"] = scheme = resolve_scheme(spec, onnx.load(str(fp32)))
            SCHEMES[scheme](fp32, int8, spec, [], TaskData(eval=[(inputs, None)], calibration=[(inputs, None)]))
            result["int8_cosine"] = _cosine(_onnx_output(int8, inputs), expected)
            if result["int8_cosine"] < INT8_MIN_COSINE:
                raise ModelpressError(f"int8 output cosine {result['int8_cosine']:.3f} < {INT8_MIN_COSINE}")
        result["status"] = "passed"
    except ModelpressError as exc:
        result.update(status="failed", stage=stage, reason=str(exc).splitlines()[0])
    return result
