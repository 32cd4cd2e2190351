"""``unfuse_gemm`` computes what the Gemm did (transposed weight, alpha, beta) as MatMul + Add under the same
name, and leaves a Gemm it cannot rewrite, which ``float_reasons`` then names."""

from types import SimpleNamespace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.onnx.runtime import make_session
from export.quantize.float_nodes import float_reasons, unfuse_gemm
from export.quantize.onnx_quant import WEIGHT_INPUTS


def gemm_model(trans_a: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w")  # [out, in]: transB
    bias = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    shape = [4, 2] if trans_a else [2, 4]
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", alpha=0.5, beta=2.0, transB=1, transA=trans_a)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def outputs(model: onnx.ModelProto, path, x) -> np.ndarray:
    onnx.save(model, str(path))
    return make_session(path).run(None, {"x": x})[0]


def test_a_gemm_becomes_matmul_and_add_with_the_same_outputs(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    expected = outputs(gemm_model(), tmp_path / "gemm.onnx", x)
    unfused = unfuse_gemm(gemm_model())
    assert [(n.op_type, n.name) for n in unfused.graph.node] == [("MatMul", "fc"), ("Add", "fc_bias")]
    assert {i.name for i in unfused.graph.initializer} == {"fc.matmul_weight", "fc.add_bias"}  # the old ones go
    np.testing.assert_allclose(outputs(unfused, tmp_path / "unfused.onnx", x), expected, rtol=1e-6, atol=1e-6)


def test_a_gemm_it_cannot_rewrite_stays_and_is_named_with_its_reason():
    model = unfuse_gemm(gemm_model(trans_a=1))  # a transposed input: MatMul would need a Transpose node
    assert [n.op_type for n in model.graph.node] == ["Gemm"]
    spec = SimpleNamespace(max_metric_drop=None, exclude_nodes=[], exclude_ops=[])
    reasons = float_reasons(model, spec, "int4", tuple(WEIGHT_INPUTS["int4"]), [])
    assert reasons == {"fc": "int4 does not quantize Gemm"}
