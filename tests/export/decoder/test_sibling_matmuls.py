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


def _pair(weights: list[onnx.TensorProto], extra_nodes=(), extra_outputs=(), opset: int = 21) -> onnx.ModelProto:
    """x -> MatMul(x, a) = ya, MatMul(x, b) = yb, then ``extra_nodes``."""
    nodes = [helper.make_node("MatMul", ["x", "a"], ["ya"], name="m"), helper.make_node("MatMul", ["x", "b"], ["yb"])]
    names = ["ya", "yb", *extra_outputs]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, "n"]) for name in names]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])
    graph = helper.make_graph([*nodes, *extra_nodes], "g", [x], outputs, weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_nothing_is_packed_where_k_or_type_differ_or_the_opset_lacks_split_sizes():
    assert pack_sibling_matmuls(_mlp(opset=11)) == []
    other_k = _pair([_weight("a", 16, 4), _weight("b", 8, 4)])  # invalid as a model, but never packed
    half = numpy_helper.from_array(RNG.standard_normal((16, 4)).astype(np.float16), "b")
    for model in (other_k, _pair([_weight("a", 16, 4), half])):
        assert pack_sibling_matmuls(model) == [] and [n.op_type for n in model.graph.node] == ["MatMul", "MatMul"]


def test_a_weight_read_elsewhere_is_left_alone():
    branch = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["inner"])], "branch", [],
        [helper.make_tensor_value_info("inner", TensorProto.FLOAT, None)],
    )  # fmt: skip
    flag = numpy_helper.from_array(np.array(True), "flag")
    read_in_a_branch = helper.make_node("If", ["flag"], ["picked"], then_branch=branch, else_branch=branch)
    models = [
        _pair([_weight("a", 16, 4), _weight("b", 16, 4), flag], [read_in_a_branch], ["picked"]),
        _pair([_weight("a", 16, 4), _weight("b", 16, 4)], extra_outputs=["a"]),  # the weight is an output
    ]
    for model in models:
        assert pack_sibling_matmuls(model) == [] and "a" in {init.name for init in model.graph.initializer}


def test_three_siblings_apart_with_readers_between_keep_their_order_and_names_stay_unique():
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    between = helper.make_node("Relu", ["ya"], ["r"])  # reads the first sibling before the second is made
    third = helper.make_node("MatMul", ["x", "c"], ["yc"])
    clash = helper.make_node("Neg", ["r"], ["m.weight"], name="m+yb+yc")  # the names the packer would make
    weights = [_weight("a", 16, 4), _weight("b", 16, 4), _weight("c", 16, 2)]
    model = _pair(weights, [between, third, clash], ["r", "yc", "m.weight"])
    model.graph.node.insert(1, model.graph.node.pop(2))  # order: m, Relu, second MatMul, third, Neg
    before = _run(model, x)
    packed = pack_sibling_matmuls(model)
    assert len(packed) == 1 and packed[0] != "m+yb+yc"
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Split", "Relu", "Neg"]
    names = [init.name for init in model.graph.initializer] + [o for n in model.graph.node for o in n.output]
    assert len(names) == len(set(names))
    for got, want in zip(_run(model, x), before):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
