"""The budget demo model: every Linear exports as a MatMul, the op 4-bit weight-only quantization packs."""

import collections

import onnx
import torch

from compress.demo import rows
from export.quantize import weight_nodes


def test_every_linear_of_the_row_mlp_exports_as_a_matmul_that_int4_packs(tmp_path):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = rows.DigitsRowMLP().eval()
    path = tmp_path / "rows.onnx"
    torch.onnx.export(model, (torch.rand(2, 1, 16, 16),), str(path), dynamo=True, opset_version=18)
    graph = onnx.load(str(path))
    ops = collections.Counter(node.op_type for node in graph.graph.node)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert linears == 4 and ops["Gemm"] == 0
    assert len(weight_nodes(graph, "int4")) == linears
