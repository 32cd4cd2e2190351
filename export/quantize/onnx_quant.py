"""Quantized ONNX artifacts with ``onnxruntime.quantization``: int8 dynamic, int8 static QDQ, int4.

Each scheme is one function in ``SCHEMES``; ONNX Runtime does the quantizing (its kernels
are the ones that will run the file, so its quantizer knows which layouts they fuse).
modelpress adds what users otherwise get wrong: a fp32 source graph ONNX Runtime can fuse
(``optimize``), embedding tables packed too (int4 Gather), calibration from the recipe's
data, and the accuracy budget, which keeps the most sensitive weight nodes in float.
"""

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import onnx
import torch

from compress.core.errors import InputError
from compress.core.progress import progress
from compress.models.data import TaskData, fixed_batches, flatten_inputs, take_rows, training_inputs
from compress.quant.isa import reduce_range
from export.errors import ExportError
from export.onnx.runtime import file_batch_size

# Weight-bearing ops each scheme quantizes, with the input index of the weight.
WEIGHT_INPUTS = {
    "int8_dynamic": {"MatMul": 1, "Gemm": 1, "Gather": 0, "Attention": 1, "EmbedLayerNormalization": 2},
    "int8_static": {"Conv": 1, "MatMul": 1, "Gemm": 1},
    "int4": {"MatMul": 1, "Gather": 0},
}
# ``scheme: auto``: static where most of the weights sit in ops ONNX Runtime CPU fuses from QDQ
# (Conv -> QLinearConv); dynamic elsewhere. By weight mass, not presence: a ViT's one patch
# Conv must not send its MatMuls to static QDQ, which runs unfused and slower than fp32 on CPU.
AUTO_SCHEME_BY_OP = {"Conv": "int8_static"}
AUTO_FALLBACK = "int8_dynamic"
PRECISION = {"int8_dynamic": "int8", "int8_static": "int8", "int4": "int4"}
# Weight input of every weight-bearing op, for weight-mass shares.
ALL_WEIGHT_INPUTS = {op: index for inputs in WEIGHT_INPUTS.values() for op, index in inputs.items()}


def weight_share(model: onnx.ModelProto, op_type: str) -> float:
    """Share of the graph's weight elements read by ``op_type`` nodes.

    A graph whose weights are not initializers (only ops) counts by presence: 1 if the op occurs.
    """
    sizes = {init.name: math.prod(init.dims) for init in model.graph.initializer}
    total = mine = 0
    for node in model.graph.node:
        index = ALL_WEIGHT_INPUTS.get(node.op_type)
        if index is not None and len(node.input) > index:
            size = sizes.get(node.input[index], 0)
            total += size
            mine += size if node.op_type == op_type else 0
    if total == 0:
        return float(any(node.op_type == op_type for node in model.graph.node))
    return mine / total


def resolve_scheme(spec, model: onnx.ModelProto) -> str:
    if spec.scheme != "auto":
        return spec.scheme
    return next((scheme for op, scheme in AUTO_SCHEME_BY_OP.items() if weight_share(model, op) >= 0.5), AUTO_FALLBACK)


def scheme_advice(spec, model: onnx.ModelProto) -> str | None:
    """Why an explicitly chosen scheme will not pay off here, or None."""
    share = weight_share(model, "Conv")
    if spec.scheme == "int8_dynamic" and share >= 0.5:
        return (
            f"int8_dynamic leaves convolutions in float ({share:.0%} of this model's weights are Conv): "
            "the file stays about as large and no faster; use scheme: int8_static (or auto)"
        )
    return None


def auto_scheme_of_module(model: torch.nn.Module) -> str:
    """What ``resolve_scheme`` will pick for this torch model's graph: its convolutions export as Conv."""
    convs = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)
    has_conv = any(isinstance(m, convs) for m in model.modules())
    return AUTO_SCHEME_BY_OP["Conv"] if has_conv else AUTO_FALLBACK


def name_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes stable names: exclusions and the budget refer to nodes by name."""
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
    return model


def check_tables(model: onnx.ModelProto, spec) -> None:
    """int4_embeddings needs a Gather over a weight table (not one fused into EmbedLayerNormalization)."""
    if spec.int4_embeddings and not weight_nodes(model, "int4", exclude_ops=["MatMul"]):
        raise ExportError(
            "int4_embeddings: the graph has no Gather over a weight table to pack as int4; remove int4_embeddings"
        )


def weight_nodes(model: onnx.ModelProto, scheme: str, exclude_ops: list[str] = ()) -> list[str]:
    """Names of the nodes ``scheme`` quantizes: weight ops whose weight is an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    ops = WEIGHT_INPUTS[scheme]
    return [
        node.name
        for node in model.graph.node
        if node.op_type in ops
        and node.op_type not in exclude_ops
        and len(node.input) > ops[node.op_type]
        and node.input[ops[node.op_type]] in initializers
    ]


class CalibrationReader:
    """onnxruntime.quantization's data reader over the calibration split, up to ``samples`` rows, in batches
    of ``batch`` rows for a graph with fixed input shapes (``file_batch_size``)."""

    def __init__(self, data: TaskData, samples: int, batch: int | None = None):
        split = data.resolve("calibration")
        self.feeds = []
        rows = 0
        for batch_of_split in data.batches(split):
            inputs = training_inputs(batch_of_split)
            count = min(int(flatten_inputs(inputs)[1][0].shape[0]), samples - rows)
            first = take_rows(inputs, count)
            for chunk in [first] if batch is None else fixed_batches(first, batch):
                names, tensors = flatten_inputs(chunk)
                self.feeds.append({n: t.detach().cpu().numpy() for n, t in zip(names, tensors)})
            rows += count
            if rows >= samples:
                break
        if not self.feeds:
            raise InputError(f"int8 static calibration: the {split!r} split is empty; give it at least one batch")
        self.split, self.rows = split, rows
        self._iterator: Iterator | None = None

    def provenance(self) -> dict:
        """Which samples calibrated: positions in the split's batch order (the first ``rows``)."""
        return {"split": self.split, "indices": list(range(self.rows))}

    def get_next(self) -> dict | None:
        if self._iterator is None:
            self._iterator = iter(self.feeds)
        feed = next(self._iterator, None)
        if feed is not None:
            self.on_batch()
        return feed

    on_batch: "Callable[[], None]" = staticmethod(lambda: None)  # moves a progress bar while ORT calibrates

    def rewind(self) -> None:
        self._iterator = None

    def __iter__(self) -> Iterator[dict]:
        """GPTQ (int4) iterates the reader instead of calling ``get_next``."""
        return iter(self.feeds)


def _int8_dynamic(src: Path, dst: Path, spec, excluded: list[str], data: TaskData) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_ops = [op for op in WEIGHT_INPUTS["int8_dynamic"] if op not in spec.exclude_ops]
    if spec.int4_embeddings:
        int8_ops.remove("Gather")
    quantize_dynamic(
        str(src),
        str(dst),
        per_channel=spec.per_channel,
        reduce_range=reduce_range(spec.reduce_range),
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        op_types_to_quantize=int8_ops,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
    )
    if spec.int4_embeddings and "Gather" not in spec.exclude_ops:
        _weight_only_int4(dst, dst, spec, excluded, ("Gather",))


def _int8_static(src: Path, dst: Path, spec, excluded: list[str], data: TaskData) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    calibration = spec.calibration
    reader = CalibrationReader(data, calibration.samples, file_batch_size(src))
    with progress(f"calibrating ({calibration.method})", total=len(reader.feeds)) as update:
        reader.on_batch = update
        quantize_static(
            str(src),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=spec.per_channel,
            reduce_range=reduce_range(spec.reduce_range),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            op_types_to_quantize=[op for op in WEIGHT_INPUTS["int8_static"] if op not in spec.exclude_ops],
            calibrate_method=methods[calibration.method],
            calibration_providers=["CPUExecutionProvider"],
            extra_options={"CalibPercentile": calibration.percentile},
        )


def int4_ops(spec) -> tuple[str, ...]:
    """The weight ops an int4 variant packs."""
    ops = ("MatMul", "Gather") if spec.quantize_embeddings else ("MatMul",)
    return tuple(op for op in ops if op not in spec.exclude_ops)


def _int4(src: Path, dst: Path, spec, excluded: list[str], data: TaskData) -> None:
    _weight_only_int4(src, dst, spec, excluded, int4_ops(spec), data)


def _weight_only_int4(src: Path, dst: Path, spec, excluded: list[str], ops: tuple[str, ...], data=None) -> None:
    """MatMulNBits / GatherBlockQuantized blocks of ``spec.block_size``, by the variant's ``algorithm``
    (``export/quantize/int4_algorithms.py``). int4 tensors need IR 10 and opset 21: ONNX Runtime's quantizer
    raises a lower opset to 21 itself (and warns); parity and the metric, measured on the result, are
    what vouch for the file."""
    import logging

    from export.quantize import int4_algorithms

    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "neural_compressor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    algorithm = int4_algorithms.require(spec.algorithm)
    calibration = (
        CalibrationReader(data, spec.calibration.samples, file_batch_size(src)) if algorithm.needs_calibration else None
    )
    quantized = int4_algorithms.quantize(onnx.load(str(src)), spec, excluded, ops, calibration)
    quantized.save_model_to_file(str(dst), False)


SCHEMES: dict[str, Callable[[Path, Path, Any, list[str], TaskData], None]] = {
    "int8_dynamic": _int8_dynamic,
    "int8_static": _int8_static,
    "int4": _int4,
}
