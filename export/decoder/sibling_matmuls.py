"""Sibling MatMuls packed into one: weight MatMuls that read the same input become one MatMul and a Split.

onnxruntime-genai's builder packs q, k and v into one MatMul, but leaves an MLP's gate and up
projections as two MatMuls of the same input. Packed side by side (the weights concatenated along N,
the product split back into the original outputs), each decode step runs one GEMM of twice the width
instead of two, and a weight-only quantizer later writes one MatMulNBits for both (30 fewer on
SmolLM2). On 2 cores the decode gain is small: the builder's own SmolLM2 int4, packed so, decoded
1.004x and 1.043x the unpacked graph in onnxruntime-genai (two timings, the order rotating each
round), inside the machine's noise (reports/smollm2-int4-qat/notes.md).

The accuracy-level choice (``export/quantize/decoder_variant``) then sees gate and up as one kind of
weight, moved to level 1 together or not at all.

It changes no weight: every output column is computed from the same row of inputs and the same
column of weights as before (equal up to the GEMM's float summation order), and a block
quantizer's blocks run along K, so a weight already on a 4-bit grid (``distill.int4_grid``) stays
on it. Only plain MatMuls whose weight is a 2-D float initializer in the file that nothing else reads
(no other node, subgraph, graph input or output) are packed, one group per input; anything else is
left as it was.
"""

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

SUBGRAPH_TYPES = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
SPLIT_SIZES_OPSET = 13  # Split takes its sizes as an input from opset 13 on
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def _packed_name(names: list[str]) -> str:
    """``/a/gate_proj/MatMul`` and ``/a/up_proj/MatMul`` -> ``/a/gate_proj+up_proj/MatMul``."""
    parts = [name.split("/") for name in names]
    if len({len(p) for p in parts}) != 1:
        return "+".join(names)
    merged = [segment[0] if len(set(segment)) == 1 else "+".join(segment) for segment in zip(*parts)]
    return "/".join(merged)


def _subgraph_reads(node: onnx.NodeProto):
    """Every name read inside ``node``'s subgraphs (If, Loop, Scan), at any depth."""
    for attribute in node.attribute:
        for graph in [attribute.g, *attribute.graphs] if attribute.type in SUBGRAPH_TYPES else []:
            for inner in graph.node:
                yield from inner.input
                yield from _subgraph_reads(inner)
            yield from (value.name for value in graph.output)


def _uses(graph: onnx.GraphProto) -> dict[str, int]:
    """How often each name is read: by a node, inside a subgraph, or as a graph input or output."""
    uses = defaultdict(int)
    for node in graph.node:
        for name in [*node.input, *_subgraph_reads(node)]:
            uses[name] += 1
    for value in [*graph.input, *graph.output]:
        uses[value.name] += 1
    return uses


def _packable(node: onnx.NodeProto, weights: dict, uses: dict) -> bool:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
        return False
    weight = weights.get(node.input[1])
    return (
        weight is not None
        and len(weight.dims) == 2
        and weight.data_type in FLOAT_TYPES
        and weight.data_location != onnx.TensorProto.EXTERNAL  # its bytes are not in hand
        and uses[node.input[1]] == 1
        and node.input[0] not in weights
    )


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or ``name`` with the first free suffix: a new tensor or node never shadows another."""
    candidate, index = name, 1
    while candidate in taken:
        candidate, index = f"{name}_{index}", index + 1
    taken.add(candidate)
    return candidate


def default_opset(model: onnx.ModelProto) -> int:
    """The default-domain opset ``model`` imports, 0 when none. ``export.onnx.exporter`` has the same
    one-liner; this room cannot import it, since ``export.onnx`` imports ``export.decoder``."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def pack_sibling_matmuls(model: onnx.ModelProto) -> list[str]:
    """Pack ``model``'s sibling weight MatMuls in place (see the module); returns the packed nodes' names."""
    opset = default_opset(model)
    if opset < SPLIT_SIZES_OPSET:
        return []
    graph = model.graph
    nodes = list(graph.node)
    weights = {init.name: init for init in graph.initializer}
    uses = _uses(graph)
    taken = {*weights, *uses, *(n.name for n in nodes), *(o for n in nodes for o in n.output)}
    groups = defaultdict(list)  # input -> indices of the weight MatMuls reading it
    for index, node in enumerate(nodes):
        if _packable(node, weights, uses):
            groups[node.input[0]].append(index)
    replaced, dropped, packed = {}, set(), []
    for source, indices in groups.items():
        siblings = [nodes[i] for i in indices]
        kinds = {(weights[n.input[1]].dims[0], weights[n.input[1]].data_type) for n in siblings}
        if len(siblings) < 2 or len(kinds) > 1:  # one K and one type, or the weights cannot sit side by side
            continue
        arrays = [numpy_helper.to_array(weights[n.input[1]]) for n in siblings]
        name = _unique(_packed_name([n.name or n.output[0] for n in siblings]), taken)
        weight = numpy_helper.from_array(np.concatenate(arrays, axis=1), _unique(f"{name}.weight", taken))
        sizes = np.array([a.shape[1] for a in arrays], dtype=np.int64)
        sizes = numpy_helper.from_array(sizes, _unique(f"{name}.split", taken))
        graph.initializer.extend([weight, sizes])
        product = _unique(f"{name}/output_0", taken)
        matmul = helper.make_node("MatMul", [source, weight.name], [product], name=name)
        split = helper.make_node("Split", [product, sizes.name], [n.output[0] for n in siblings],
                                 name=_unique(f"{name}/Split", taken), axis=-1)  # fmt: skip
        # in the first sibling's place: its input is ready there, and every sibling's readers come later
        replaced.update({index: [] for index in indices[1:]})
        replaced[indices[0]] = [matmul, split]
        dropped.update(n.input[1] for n in siblings)
        packed.append(name)
    if packed:
        order = [new for index, node in enumerate(nodes) for new in replaced.get(index, [node])]
        kept = [init for init in graph.initializer if init.name not in dropped]
        del graph.node[:]
        graph.node.extend(order)
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return packed
