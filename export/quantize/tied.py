"""A decoder's tied embedding and LM head around weight-only quantization: untied before packing, shared after.

onnxruntime-genai's builder stores a tied table once, as the LM head's [hidden, vocab] weight, and the
embedding reads it through ``Transpose(perm=[1, 0])``. MatMulNBits and GatherBlockQuantized need
constant tables of their own, so ``untie_lm_head`` and ``untie_embedding`` give each its own copy
before packing. After packing, ``share_head_with_embedding`` lets the embedding read the packed head's
bytes (GatherBlockQuantized over its codes, scales and zero points, as the builder does for its int4
head), so the table is stored once again, quantized exactly as the head.
"""

import numpy as np
import onnx

SHARED_EMBEDDING = "tied to the 8-bit LM head: GatherBlockQuantized (bits 8) over the head's bytes, no copy of its own"
SHARED_EMBEDDING_INT4 = (
    "tied to the 4-bit LM head (on the symmetric grid, packed without offsets): GatherBlockQuantized (bits 4) "
    "over the head's bytes, no copy of its own"
)


def producers(graph) -> dict:
    return {output: node for node in graph.node for output in node.output}


def untie_lm_head(model: onnx.ModelProto) -> bool:
    """Give a logits MatMul that reads a table through ``Transpose(perm=[1, 0])`` its own transposed
    initializer (the Transpose goes when nothing else reads it).
    True when it did."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    made, tensor = producers(graph), "logits"
    for _ in range(8):
        node = made.get(tensor)
        if node is None:
            return False
        if node.op_type == "MatMul":
            source = made.get(node.input[1])
            perm = [list(a.ints) for a in source.attribute if a.name == "perm"] if source is not None else []
            if source is None or source.op_type != "Transpose" or perm != [[1, 0]] or source.input[0] not in inits:
                return False
            table = onnx.numpy_helper.to_array(inits[source.input[0]])
            name = source.input[0] + ".lm_head_transposed"
            graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(table.T), name))
            node.input[1] = name
            if not any(source.output[0] in other.input for other in graph.node):
                graph.node.remove(source)  # else the float table stays alive beside its packed copies
            return True
        tensor = node.input[0]
    return False


def untie_embedding(model: onnx.ModelProto) -> bool:
    """Give an embedding Gather that reads a table through ``Transpose(perm=[1, 0])`` its own
    [vocab, hidden] initializer, so the table can be packed as GatherBlockQuantized. True when it did."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    made = producers(graph)
    for node in graph.node:
        source = made.get(node.input[0]) if node.op_type == "Gather" and node.input[1] == "input_ids" else None
        perm = [list(a.ints) for a in source.attribute if a.name == "perm"] if source is not None else []
        if source is None or source.op_type != "Transpose" or perm != [[1, 0]] or source.input[0] not in inits:
            continue
        table = onnx.numpy_helper.to_array(inits[source.input[0]])
        name = source.input[0] + ".embedding"
        graph.initializer.append(onnx.numpy_helper.from_array(np.ascontiguousarray(table.T), name))
        node.input[0] = name
        if not any(source.output[0] in other.input for other in graph.node):
            graph.node.remove(source)
        return True
    return False


def share_head_with_embedding(model: onnx.ModelProto, embedding: str, lm_head: str, bits: int) -> bool:
    """Replace the float embedding Gather by a GatherBlockQuantized that reads the packed ``bits``-bit LM
    head's codes, scales and zero points through Reshapes. False, leaving the graph alone, where that
    would not be the head's own table: the layouts differ (K not a whole number of blocks), or a 4-bit
    head carries ``block_minimum``'s offsets, which a Gather cannot add."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    head = next((n for n in graph.node if n.op_type == "MatMulNBits" and n.name == f"{lm_head}_Q{bits}"), None)
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.name == embedding), None)
    offsets = any(n.name == f"{lm_head}_minimums" for n in graph.node)
    if head is None or gather is None or offsets:
        return False
    attrs = {a.name: a.i for a in head.attribute}
    codes, scales = inits.get(head.input[1]), inits.get(head.input[2])
    if codes is None or scales is None or attrs["K"] % attrs["block_size"]:
        return False
    blocks = attrs["K"] // attrs["block_size"]
    zeros = inits.get(head.input[3]) if len(head.input) > 3 and head.input[3] else None
    if zeros is None and bits == 8:  # symmetric: MatMulNBits' implied zero point 128, written out for the Gather
        zeros = onnx.numpy_helper.from_array(np.full((attrs["N"], blocks), 128, np.uint8), f"{embedding}.zero_point")
        graph.initializer.append(zeros)
    # (4 bits without zero points: GatherBlockQuantized over uint8 data implies 8, as MatMulNBits does)
    shapes = {"codes": [attrs["N"], attrs["K"] * bits // 8], "blocks": [attrs["N"], blocks]}
    if zeros is not None:
        shapes["zeros"] = [attrs["N"], blocks if bits == 8 else (blocks + 1) // 2]
    for key, dims in shapes.items():
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(dims, np.int64), f"{embedding}.{key}_shape"))
    table = gather.input[0]
    sources = [(codes.name, "codes", "codes"), (scales.name, "scales", "blocks")]
    sources += [(zeros.name, "zero_points", "zeros")] if zeros is not None else []
    nodes = [
        onnx.helper.make_node("Reshape", [source, f"{embedding}.{shape}_shape"], [f"{embedding}.{key}"])
        for source, key, shape in sources
    ]
    reshaped = [node.output[0] for node in nodes]
    nodes.append(
        onnx.helper.make_node(
            "GatherBlockQuantized", [reshaped[0], gather.input[1], *reshaped[1:]], list(gather.output),
            name=f"{embedding}_Q{bits}", domain="com.microsoft", gather_axis=0, quantize_axis=1,
            block_size=attrs["block_size"], bits=bits,
        )
    )  # fmt: skip
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    if not any(table in node.input for node in graph.node) and table in inits:
        graph.initializer.remove(inits[table])
    return True
