"""The int8 QDQ ONNX artifact of a QAT model, with the scales training learned and observed.

torch.onnx (TorchScript exporter: it writes fake quantization as QuantizeLinear/DequantizeLinear)
exports the fake-quant model; then each weight's QuantizeLinear, which would re-quantize float
weights at every run, is folded into an int8 initializer, and each float bias of a Conv/Gemm fed
by dequantized input and weight becomes int32 with scale input scale x weight scale: the layout
``onnxruntime.quantization.quantize_static`` writes, which ORT fuses to QLinearConv. Rounding is
ONNX's (half to even), so the int8 codes are those the fake quantization used.

Parity is checked against the fake-quant torch model (not the float one), within ``parity_steps``
quantization steps of the last quantized layer's output: ORT requantizes in integer arithmetic
and can round a value that sits on a half step the other way.
"""

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from compress.core.io import write_atomic
from compress.models.data import TaskData
from compress.models.evaluate import Evaluator
from compress.quant.fake_quant import REDUCED_QMAX, quantized_layers
from compress.quant.isa import int8_saturates
from compress.recipe.schema import ParitySpec, Recipe
from export.errors import ExportError
from export.onnx.exporter import export_onnx
from export.onnx.validate import quantized_parity
from export.quantize.float_nodes import float_weight_nodes
from export.quantize.records import checked, quantized_record
from export.runfolder.artifacts import artifacts_dir

INT8_RANGE = (-128, 127)
BIASED_OPS = ("Conv", "Gemm")


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _broadcast(values: np.ndarray, rank: int, axis: int) -> np.ndarray:
    if values.ndim == 0 or values.size == 1:
        return values.reshape(())
    shape = [1] * rank
    shape[axis] = values.size
    return values.reshape(shape)


# What the TorchScript exporter leaves on constants (the rounded bias, a shared zero point): folded here.
CONSTANT_OPS = {"Identity": np.asarray, "Round": np.rint, "Mul": np.multiply, "Div": np.divide}


def fold_weight_quantizers(model: onnx.ModelProto) -> onnx.ModelProto:
    """QuantizeLinear over a float weight -> an int8 initializer; float biases -> int32 + DequantizeLinear."""
    graph = model.graph
    constants = _constants(graph)
    nodes, renamed, new_inits = [], {}, []
    for node in graph.node:  # in topological order: a constant is known before its consumers
        node = _copy(node)
        node.input[:] = [renamed.get(name, name) for name in node.input]
        inputs_known = all(name in constants for name in node.input)
        if node.op_type in CONSTANT_OPS and inputs_known:
            value = np.asarray(CONSTANT_OPS[node.op_type](*(constants[name] for name in node.input)))
            constants[node.output[0]] = value
            new_inits.append(numpy_helper.from_array(value, node.output[0]))
        elif node.op_type == "QuantizeLinear" and inputs_known:
            name = f"{node.input[0]}_quantized"
            constants[name] = _quantize(node, constants)
            new_inits.append(numpy_helper.from_array(constants[name], name))
            renamed[node.output[0]] = name
        else:
            nodes.append(node)
    graph.initializer.extend(new_inits)
    del graph.node[:]
    graph.node.extend(nodes)
    producers = {out: node for node in graph.node for out in node.output}
    for node in list(nodes):
        if node.op_type in BIASED_OPS and len(node.input) == 3 and node.input[2] in constants:
            _quantize_bias(graph, node, constants, producers)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    clone = onnx.NodeProto()
    clone.CopyFrom(node)
    return clone


def _quantize(node: onnx.NodeProto, constants: dict) -> np.ndarray:
    """ONNX QuantizeLinear on constants: round half to even, saturate to the zero point's type."""
    weight, scale, zero_point = (constants[name] for name in node.input)
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    codes = np.rint(weight / _broadcast(scale, weight.ndim, axis)) + _broadcast(zero_point, weight.ndim, axis)
    info = np.iinfo(zero_point.dtype)
    return np.clip(codes, info.min, info.max).astype(zero_point.dtype)


def _dequantize_scale(node, constants) -> np.ndarray | None:
    if node is None or node.op_type != "DequantizeLinear" or node.input[1] not in constants:
        return None
    return constants[node.input[1]].astype(np.float32)


def _quantize_bias(graph, node, constants, producers) -> None:
    input_scale = _dequantize_scale(producers.get(node.input[0]), constants)
    weight_scale = _dequantize_scale(producers.get(node.input[1]), constants)
    if input_scale is None or weight_scale is None:
        return  # a layer left in float: its bias stays float too
    bias = constants[node.input[2]].astype(np.float32)
    scale = (input_scale.reshape(()) * weight_scale.reshape(-1) * np.ones_like(bias)).astype(np.float32)
    codes = np.rint(bias / scale).astype(np.int32)
    base = node.input[2]
    graph.initializer.extend(
        [
            numpy_helper.from_array(codes, f"{base}_quantized"),
            numpy_helper.from_array(scale, f"{base}_scale"),
            numpy_helper.from_array(np.zeros_like(codes), f"{base}_zero_point"),
        ]
    )
    dequantize = onnx.helper.make_node(
        "DequantizeLinear",
        [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
        [f"{base}_dequantized"],
        name=f"{node.name or base}_bias_DequantizeLinear",
        axis=0,
    )
    position = next(i for i, other in enumerate(graph.node) if other.output[0] == node.output[0])
    graph.node.insert(position, dequantize)
    graph.node[position + 1].input[2] = f"{base}_dequantized"


def output_step(model: torch.nn.Module) -> float:
    """One quantization step of the last quantized layer's output (the model's, for a classifier head)."""
    layers = list(quantized_layers(model).values())
    if not layers:
        raise ExportError("int8_qat artifact: the model holds no fake quantization; put a qat pass in the recipe")
    return float(layers[-1].output_quant.scale)


def qat_parity(recipe: Recipe, spec, model: torch.nn.Module) -> ParitySpec:
    """Fake-quant torch vs ORT: ``parity_steps`` output steps, the quantized cosine and agreement floors."""
    floors = quantized_parity(recipe).model_dump(exclude={"atol"})
    # a value one step off lands a float rounding above the step (0.00886440 vs 0.00886434 seen): 1e-4 slack
    return ParitySpec(atol=spec.parity_steps * output_step(model) * (1 + 1e-4), **floors)


def build_qat_variant(
    spec,
    name: str,
    fake_quant_model: torch.nn.Module,
    recipe: Recipe,
    evaluator: Evaluator,
    data: TaskData,
    example_inputs: Any,
    out_dir: Path,
) -> dict:
    """Export the fake-quant model as int8 QDQ ONNX and check it against that model; return its record."""
    tolerance = qat_parity(recipe, spec, fake_quant_model)
    path = artifacts_dir(out_dir) / f"{name}.onnx"
    was_training = fake_quant_model.training
    fake_quant_model.eval()  # frozen ranges; the caller's mode comes back below
    with tempfile.TemporaryDirectory(prefix="modelpress-qat-") as scratch:
        source = Path(scratch) / "qdq.onnx"
        export = recipe.export
        export_onnx(
            fake_quant_model,
            example_inputs,
            source,
            spec.opset,
            export.dynamic_batch,
            export.output_name,
            exporter="torchscript",
        )
        graph = fold_weight_quantizers(onnx.load(str(source)))
        onnx.checker.check_model(graph)
        write_atomic(path, lambda tmp: onnx.save(graph, str(tmp)))
    record = quantized_record(
        name,
        path,
        out_dir,
        spec,
        precision="int8",
        scheme=spec.scheme,
        quantized_nodes=len(quantized_layers(fake_quant_model)),
        float_nodes=[name for name, _ in float_weight_nodes(onnx.load(str(path), load_external_data=False))],
        budget=None,
        calibration_samples=None,
        exporter="torchscript",
    )
    why = "int8 QAT artifact differs from the fake-quant torch model"
    record = checked(record, path, fake_quant_model, tolerance, evaluator, data, why)
    record["parity"]["reference"] = "fake-quant torch model"
    full_range = any(layer.weight_quant.qmax > REDUCED_QMAX for layer in quantized_layers(fake_quant_model).values())
    if record["status"] == "failed" and full_range and int8_saturates():
        record["error"] += (
            "; this CPU's int8 kernels saturate with 8-bit weights (x86 without VNNI): set reduce_range: true "
            "in the qat pass"
        )
    fake_quant_model.train(was_training)
    return record
