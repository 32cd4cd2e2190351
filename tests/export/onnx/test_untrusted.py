"""export.onnx.untrusted: what a file declares, checked before ONNX Runtime reads it."""

import onnx
from onnx import TensorProto, helper

from export.onnx import untrusted


def saved(tmp_path, tensor):
    graph = helper.make_graph(
        [helper.make_node("Identity", [tensor.name], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", tensor.data_type, list(tensor.dims))],
        [tensor],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]), path)
    return path


def test_packed_four_bit_tensors_are_measured_in_half_bytes(tmp_path):
    # 5 int4 values take 3 bytes (two per byte, the last padded): MatMulNBits' and GatherBlockQuantized's tables
    for data_type in (TensorProto.INT4, TensorProto.UINT4):
        tensor = helper.make_tensor("w", data_type, [5], [1, 2, 3, 4, 5])
        assert len(tensor.raw_data) == 3 or not tensor.raw_data
        assert untrusted._declared_bytes(tensor) == 3
        assert untrusted.refusal(saved(tmp_path, tensor)) is None


def test_a_tensor_holding_fewer_bytes_than_it_declares_is_refused(tmp_path):
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4], raw_data=b"\0" * 8)
    assert "declares 16 bytes and holds 8" in untrusted.refusal(saved(tmp_path, tensor))
