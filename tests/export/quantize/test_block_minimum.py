"""block_minimum: 4-bit blocks as minimum + q x scale, exact on a Q4_1 grid, on MatMulNBits' integer
path plus a small fp32 MatMul of the block minimums."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.errors import ExportError
from export.quantize import block_minimum

K, N, BLOCK = 128, 48, 32


def q4_1_weight(seed: int = 0, centred: bool = False) -> np.ndarray:
    """A [K, N] weight on llama.cpp's Q4_1 grid: per block of 32 along K, d x q + m, q in 0..15 (every
    block using the whole range, as a block's extremes always do). ``centred``: m = -7.5 d, blocks
    around zero as a trained layer's are."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 16, size=(N, K // BLOCK, BLOCK))
    codes[..., 0], codes[..., 1] = 0, 15
    d = rng.uniform(0.01, 0.1, size=(N, K // BLOCK, 1)).astype(np.float32)
    m = -7.5 * d if centred else rng.normal(0, 0.2, size=(N, K // BLOCK, 1)).astype(np.float32)
    return (codes * d + m).astype(np.float32).reshape(N, K).T.copy()


def sqnr_db(expected: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10((expected**2).sum() / ((expected - got) ** 2).sum()))


def matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_a_q4_1_grid_comes_back_exactly():
    weight = q4_1_weight()
    packed = block_minimum.pack(weight, BLOCK)
    np.testing.assert_allclose(block_minimum.dequantize(*packed), weight, rtol=0, atol=1e-6)


def test_the_packed_matmul_equals_the_float_one_on_the_grid_at_fp32_compute():
    weight, x = q4_1_weight(), np.random.default_rng(1).normal(size=(5, K)).astype(np.float32)
    packed = block_minimum.quantize(matmul_model(weight), ["proj"], BLOCK, accuracy_level=1)
    ops = [node.op_type for node in packed.graph.node]
    assert ops == ["MatMul", "MatMulNBits", "MatMul", "Add"]  # block sums, packed part, minimums, sum
    assert "w" not in {init.name for init in packed.graph.initializer}  # the float weight is gone
    np.testing.assert_allclose(run(packed, x), x @ weight, rtol=0, atol=1e-4)


def test_symmetric_writes_no_zero_points_and_stays_exact_at_fp32_compute():
    # MatMulNBits reads the implied zero point 8; the offsets carry minimum + 8 x scale instead.
    weight, x = q4_1_weight(8), np.random.default_rng(9).normal(size=(5, K)).astype(np.float32)
    _, _, zero, _ = block_minimum.pack(weight, BLOCK, symmetric=True)
    assert (zero == 8).all()
    packed = block_minimum.quantize(matmul_model(weight), ["proj"], BLOCK, accuracy_level=1, symmetric=True)
    node = next(node for node in packed.graph.node if node.op_type == "MatMulNBits")
    assert len(node.input) == 3  # x, codes, scales: no zero points
    np.testing.assert_allclose(run(packed, x), x @ weight, rtol=0, atol=1e-4)


def test_a_weight_on_the_symmetric_grid_is_packed_as_matmulnbits_alone():
    # k x max|w| / 7 per block (what distill.int4_grid: symmetric trains to): no zero points, no offsets
    rng = np.random.default_rng(10)
    steps = rng.integers(-7, 8, size=(N, K // BLOCK, BLOCK))
    steps[..., 0] = 7
    scale = rng.uniform(0.01, 0.1, size=(N, K // BLOCK, 1)).astype(np.float32)
    weight = (steps * scale).astype(np.float32).reshape(N, K).T.copy()
    x = rng.normal(size=(5, K)).astype(np.float32)
    packed = block_minimum.quantize(matmul_model(weight), ["proj"], BLOCK, accuracy_level=1, symmetric=True)
    assert [(node.op_type, len(node.input)) for node in packed.graph.node] == [("MatMulNBits", 3)]
    np.testing.assert_allclose(run(packed, x), x @ weight, rtol=0, atol=1e-4)
    # without symmetric (or off the grid) the same weight takes the four-op layout
    ops = [node.op_type for node in block_minimum.quantize(matmul_model(weight), ["proj"], BLOCK, 1).graph.node]
    assert ops == ["MatMul", "MatMulNBits", "MatMul", "Add"]


def test_zero_points_centre_the_codes_so_int8_inputs_cost_only_their_own_rounding():
    # accuracy_level 4 rounds the input to int8 per block inside MatMulNBits; that error is multiplied
    # by (q - zero point). With the code nearest w = 0 as the zero point it is multiplied by the weight
    # itself, as int8 inputs times the exact weight would be; with zero point 0 (all of the minimum in
    # the fp32 offsets) by w - minimum, 4-5 dB worse on these blocks and 0.13 of SmolLM2's top-1.
    weight = q4_1_weight(6, centred=True)
    _, _, zero, _ = block_minimum.pack(weight, BLOCK)
    assert set(np.unique(zero)) <= {7, 8}
    x = np.random.default_rng(7).normal(size=(16, K)).astype(np.float32)
    blocks = x.reshape(16, -1, BLOCK)
    step = np.abs(blocks).max(-1, keepdims=True) / 127
    int8_input = (np.clip(np.rint(blocks / step), -127, 127) * step).reshape(x.shape)
    floor = sqnr_db(x @ weight, int8_input @ weight)
    got = run(block_minimum.quantize(matmul_model(weight), ["proj"], BLOCK, accuracy_level=4), x)
    assert sqnr_db(x @ weight, got) > floor - 0.5


def test_matmuls_reading_one_input_share_its_block_sums_at_any_rank():
    gate, up = q4_1_weight(3), q4_1_weight(4)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "g"], ["a"], name="gate"),
            helper.make_node("MatMul", ["x", "u"], ["b"], name="up"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", "seq", N]) for name in "ab"],
        [numpy_helper.from_array(gate, "g"), numpy_helper.from_array(up, "u")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    packed = block_minimum.quantize(model, ["gate", "up"], BLOCK, accuracy_level=1)
    ops = [node.op_type for node in packed.graph.node]
    assert ops.count("MatMul") == 3 and ops.count("MatMulNBits") == 2  # one block-sum MatMul for both
    x = np.random.default_rng(5).normal(size=(2, 3, K)).astype(np.float32)
    session = ort.InferenceSession(packed.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = session.run(None, {"x": x})
    np.testing.assert_allclose(a, x @ gate, rtol=0, atol=1e-4)
    np.testing.assert_allclose(b, x @ up, rtol=0, atol=1e-4)


def test_off_the_grid_it_is_asymmetric_rounding_with_its_usual_error():
    rng = np.random.default_rng(2)
    weight, x = rng.normal(size=(K, N)).astype(np.float32), rng.normal(size=(16, K)).astype(np.float32)
    expected = x @ weight
    got = run(block_minimum.quantize(matmul_model(weight), ["proj"], BLOCK, accuracy_level=1), x)
    assert 15.0 < sqnr_db(expected, got) < 40.0  # 4-bit RTN of Gaussian weights: ~20 dB (lossy, and not exact)


def test_a_width_that_blocks_do_not_divide_is_refused():
    with pytest.raises(ExportError, match="not a multiple of block_size"):
        block_minimum.pack(np.zeros((40, 8), dtype=np.float32), BLOCK)
