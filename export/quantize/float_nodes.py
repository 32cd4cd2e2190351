"""What a quantized artifact leaves in float, and why: read from the written file, never from the request.

ONNX Runtime's pre-processing fuses a Linear's ``MatMul`` + ``Add`` into ``Gemm`` wherever the input is
2-D (a CNN's head; every layer of a transformer exported at a fixed batch of 1, whose activations the
graph reshapes to [tokens, width]); MatMulNBits packs ``MatMul`` only, so int4 silently skipped them.
``unfuse_gemm`` turns such a ``Gemm`` back into ``MatMul`` (+ ``Add`` for its bias) under the same node
name, so exclusions and the budget still name it. ``float_reasons`` then lists every weight node of the
written file whose weight is still a float initializer, each with the reason it stayed float.
"""

import numpy as np
import onnx
from onnx import numpy_helper

from compress.core.errors import InputError
from export.quantize.onnx_quant import ALL_WEIGHT_INPUTS, WEIGHT_INPUTS

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
# The weight-bearing ops whose float weight the record lists (Conv counts for every scheme: a model's layers).
LISTED_OPS = {**ALL_WEIGHT_INPUTS, "Conv": 1}


def _attribute(node: onnx.NodeProto, name: str, default):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else onnx.helper.get_attribute_value(found)


def _unfusable(node: onnx.NodeProto, weights: dict) -> bool:
    """A Gemm that MatMul (+ Add) computes exactly: constant weight, untransposed input, constant bias."""
    bias_ok = len(node.input) < 3 or not node.input[2] or node.input[2] in weights
    return node.op_type == "Gemm" and node.input[1] in weights and _attribute(node, "transA", 0) == 0 and bias_ok


def unfuse_gemm(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every Gemm over a constant weight as MatMul (+ Add), alpha and beta folded into the
    constants; ``Gemm`` nodes it cannot rewrite stay (``float_reasons`` names them)."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes, added = [], []
    for node in graph.node:
        if not _unfusable(node, weights):
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(weights[node.input[1]])
        weight = (weight.T if _attribute(node, "transB", 0) else weight) * np.float32(_attribute(node, "alpha", 1.0))
        added.append(numpy_helper.from_array(np.ascontiguousarray(weight), f"{node.name}.matmul_weight"))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.name}.matmul_out" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], added[-1].name], [product], name=node.name))
        if has_bias:
            bias = numpy_helper.to_array(weights[node.input[2]]) * np.float32(_attribute(node, "beta", 1.0))
            added.append(numpy_helper.from_array(bias.astype(weight.dtype), f"{node.name}.add_bias"))
            nodes.append(
                onnx.helper.make_node("Add", [product, added[-1].name], [node.output[0]], name=f"{node.name}_bias")
            )
    if not added:
        return model
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    used = {name for node in graph.node for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return model


def check_excluded(excluded, known, lacks: str, names_from: str) -> None:
    """Refuse an ``exclude_nodes`` name that is not in ``known`` (the graph's weight nodes, in order): it
    would exclude nothing, silently (a name from another export, or a typo), and the node meant would
    stay quantized. ``lacks`` begins the message ("this graph has no int8_dynamic weight node");
    ``names_from`` says where the user finds the graph's own names."""
    unknown = [name for name in excluded if name not in known]
    if unknown:
        like = ", ".join(repr(name) for name in list(known)[:2]) or "none"
        raise InputError(f"exclude_nodes: {lacks} {unknown[0]!r}; its weight nodes are named like {like} "
                         f"({names_from})")  # fmt: skip


def float_weight_nodes(model: onnx.ModelProto) -> list[tuple[str, str]]:
    """(name, op) of every weight-bearing node whose weight is still a float initializer."""
    floats = {init.name for init in model.graph.initializer if init.data_type in FLOAT_TYPES}
    return [
        (node.name, node.op_type)
        for node in model.graph.node
        if node.op_type in LISTED_OPS
        and len(node.input) > LISTED_OPS[node.op_type]
        and node.input[LISTED_OPS[node.op_type]] in floats
    ]


def float_reasons(model: onnx.ModelProto, spec, scheme: str, ops: tuple[str, ...], budget_float: list[str]) -> dict:
    """Every node of the written ``model`` left float, with why. ``ops``: the weight ops ``scheme`` was asked
    to quantize (int4: MatMul, and Gather with ``quantize_embeddings``); ``budget_float``: the accuracy
    budget's choice. The budget's nodes come first, in its order (the most sensitive first), then the
    others in graph order."""
    found = dict(float_weight_nodes(model))
    reasons = {}
    for name, op in sorted(
        found.items(), key=lambda item: budget_float.index(item[0]) if item[0] in budget_float else len(budget_float)
    ):
        if name in budget_float:
            reasons[name] = f"kept float by the accuracy budget (max_metric_drop {spec.max_metric_drop})"
        elif name in spec.exclude_nodes:
            reasons[name] = "listed in exclude_nodes"
        elif op in spec.exclude_ops:
            reasons[name] = f"{op} is in exclude_ops"
        elif op not in WEIGHT_INPUTS[scheme]:
            reasons[name] = f"{scheme} does not quantize {op}"
        elif op not in ops:
            reasons[name] = f"{op} not asked for ({scheme} packs {', '.join(ops) or 'nothing'} here)"
        else:
            reasons[name] = f"left float by onnxruntime.quantization ({scheme})"
    return reasons
