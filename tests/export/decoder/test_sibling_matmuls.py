"""sibling_matmuls: weight MatMuls of one input become one MatMul and a Split, with the same outputs."""

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.decoder.sibling_matmuls import pack_sibling_matmuls

RNG = np.random.default_rng(0)


def _weight(name: str, k: int, n: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal((k, n)).astype(np.float32), name)


def _mlp(opset: int = 21) -> onnx.ModelProto:
    """gate and up read x (packable); down reads their product; `shared` is read by two nodes (not packable)."""
    nodes = [
        helper.make_node("MatMul", ["x", "wg"], ["g"], name="/mlp/gate_proj/MatMul"),
        helper.make_node("MatMul", ["x", "wu"], ["u"], name="/mlp/up_proj/MatMul"),
        helper.make_node("Sigmoid", ["g"], ["s"]),
        helper.make_node("Mul", ["g", "s"], ["a"]),
        helper.make_node("Mul", ["a", "u"], ["h"]),
        helper.make_node("MatMul", ["h", "wd"], ["y"], name="/mlp/down_proj/MatMul"),
        helper.make_node("MatMul", ["y", "shared"], ["z1"], name="/z1/MatMul"),
        helper.make_node("MatMul", ["y", "shared"], ["z2"], name="/z2/MatMul"),
        helper.make_node("MatMul", ["y", "wt"], ["t"], name="/t/MatMul"),  # its sibling reads a shared weight
    ]
    inits = [_weight("wg", 16, 24), _weight("wu", 16, 24), _weight("wd", 24, 16), _weight("shared", 16, 8)]
    inits.append(_weight("wt", 16, 4))
    widths = {"u": 24, "z1": 8, "z2": 8, "t": 4}
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, n]) for name, n in widths.items()]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_gate_and_up_become_one_matmul_and_a_split_with_the_same_outputs():
    model = _mlp()
    x = RNG.standard_normal((2, 3, 16)).astype(np.float32)
    before = _run(model, x)
    packed = pack_sibling_matmuls(model)
    assert packed == ["/mlp/gate_proj+up_proj/MatMul"]
    onnx.checker.check_model(model)
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["MatMul"] == 5 and ops["Split"] == 1  # 6 MatMuls before: gate and up are one now
    names = {init.name: tuple(init.dims) for init in model.graph.initializer}
    assert "wg" not in names and "wu" not in names and names[f"{packed[0]}.weight"] == (16, 48)
    assert "shared" in names and "wt" in names  # a weight two nodes read is never moved, nor its sibling
    for got, want in zip(_run(model, x), before):  # a graph output (u) is still written, by the Split
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_nothing_is_packed_where_siblings_differ_in_k_or_the_opset_lacks_split_sizes():
    model = _mlp(opset=11)
    assert pack_sibling_matmuls(model) == [] and len(model.graph.node) == 9
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])
    nodes = [helper.make_node("MatMul", ["x", "a"], ["ya"]), helper.make_node("MatMul", ["x", "b"], ["yb"])]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("ya", "yb")]
    weights = [_weight("a", 16, 4), _weight("b", 16, 4)]
    weights[1] = numpy_helper.from_array(RNG.standard_normal((16, 4)).astype(np.float16), "b")  # another type
    model = helper.make_model(helper.make_graph(nodes, "g", [x], outputs, weights))
    assert pack_sibling_matmuls(model) == [] and [n.op_type for n in model.graph.node] == ["MatMul", "MatMul"]
