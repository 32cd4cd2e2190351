"""onnxscript's ONNX Runtime fusions applied to an exported decoder-with-past (optional, experimental).

``onnxscript.rewriter.ort_fusions.optimize_for_ort`` rewrites torch-exported transformer graphs
into ONNX Runtime contrib ops. On a dynamo-exported Llama with the KV cache (onnxscript 0.7.2,
onnxruntime 1.32) it produces SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization and
MultiHeadAttention (with past key/value inputs); it does NOT produce GroupQueryAttention (the GQA
rule does not match the concatenating cache: K/V heads are still repeated by Expand) nor a
standalone RotaryEmbedding (its match needs the cos/sin-cache fusion, which does not match the
dynamic position ids, so it is inlined back). Generation parity is unchanged (~1e-7 in fp32).
The input/output names are kept, so the fused file is a drop-in for ``parity`` and genai folders.
"""

from pathlib import Path

# The contrib ops a caller can look for in the fused graph.
FUSED_OPS = ("SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "MultiHeadAttention",
             "GroupQueryAttention", "RotaryEmbedding")  # fmt: skip


def fuse_for_ort(source: Path | str, target: Path | str) -> dict[str, int]:
    """Write ``source`` with ORT fusions applied to ``target``; return how many of each FUSED_OPS it holds."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model, _ = optimize_for_ort(ir.load(str(source)), clear_metadata=True)
    ir.save(model, str(target))
    counts = dict.fromkeys(FUSED_OPS, 0)
    for node in model.graph.all_nodes():
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts
