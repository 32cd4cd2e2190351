"""weight_rounding: the torch model trained through int4 rounding computes what the artifact computes."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compress.training.weight_rounding import int8_blocks, rounded_weights
from export.quantize import block_minimum

K, N, BLOCK = 128, 48, 32


def _level_4_matmul(weight: np.ndarray) -> ort.InferenceSession:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", N])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    packed = block_minimum.quantize(model, ["proj"], BLOCK, accuracy_level=4, symmetric=True)
    assert [node.op_type for node in packed.graph.node] == ["MatMulNBits"]  # on the grid: packed alone
    return ort.InferenceSession(packed.SerializeToString(), providers=["CPUExecutionProvider"])


def test_int8_inputs_make_torch_compute_what_matmulnbits_computes_at_level_4():
    torch.manual_seed(0)
    linear = torch.nn.Linear(K, N, bias=False)
    x = torch.randn(6, K)
    x[:, 5] *= 30  # an outlier channel, as decoders' activations have: its block's int8 step is coarse
    with torch.no_grad(), rounded_weights({"proj": linear}, BLOCK, "symmetric", inputs="int8") as names:
        simulated = linear(x)
    assert names == ["proj"]
    plain = linear(x).detach()  # on exit: the weight stays rounded, the input hook is gone
    got = _level_4_matmul(linear.weight.detach().numpy().T.copy()).run(None, {"x": x.numpy()})[0]
    scale = float(np.abs(got).max())
    simulated_error = float(np.abs(simulated.numpy() - got).max()) / scale
    plain_error = float(np.abs(plain.numpy() - got).max()) / scale
    assert simulated_error < 1e-5  # the same int8 inputs: only fp32 summation order differs
    assert plain_error > 100 * simulated_error  # fp32 inputs differ from level 4 by the int8 rounding


def test_int8_blocks_round_per_block_and_pass_the_gradient_straight_through():
    x = torch.tensor([[0.3, -1.27, 0.004, 0.5] * 8 + [100.0] + [0.6] * 31], requires_grad=True)
    rounded = int8_blocks(x, BLOCK)
    first, second = rounded[0, :BLOCK], rounded[0, BLOCK:]
    assert torch.allclose(first[:4], torch.tensor([0.3, -1.27, 0.0, 0.5]), rtol=0, atol=1e-6)  # step 0.01
    assert torch.allclose(second[1:], torch.full((31,), 100 / 127), rtol=1e-6)  # step 100/127: 0.6 -> 1 step
    rounded.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_a_registration_failing_partway_leaves_every_layer_as_it_was(monkeypatch):
    from torch.nn.utils import parametrize

    from compress.training import weight_rounding

    layers = {name: torch.nn.Linear(BLOCK, 4) for name in ("a", "b")}
    before = {name: layer.weight.detach().clone() for name, layer in layers.items()}
    made = []

    def grid(block_size):  # the second layer's rounding cannot be made
        made.append(block_size)
        if len(made) == 2:
            raise RuntimeError("no grid")
        return weight_rounding.SymmetricRounding(block_size)

    monkeypatch.setitem(weight_rounding.GRIDS, "symmetric", grid)
    with pytest.raises(RuntimeError, match="no grid"):
        with rounded_weights(layers, BLOCK, grid="symmetric", inputs="int8"):
            raise AssertionError("the context must not open")
    assert not any(parametrize.is_parametrized(layer) for layer in layers.values())
    assert not any(layer._forward_pre_hooks for layer in layers.values())
    # the context never opened: both layers keep their own weights, the first one's rounding undone
    assert all(torch.equal(layer.weight, before[name]) for name, layer in layers.items())
