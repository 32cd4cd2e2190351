"""int8 for convolutions: auto goes static by weight mass, and int8_dynamic on a CNN is told why not."""

import onnx
from onnx import TensorProto, helper

import compress
from compress.passes.quantize import OnnxQuantSpec
from export.quantize.onnx_quant import resolve_scheme, scheme_advice, weight_share
from tests.tiny_models import TINY_ARCHS


def graph(conv_weights: int, matmul_weights: int) -> onnx.ModelProto:
    """One Conv and one MatMul whose weights are initializers of the given sizes."""
    nodes = [helper.make_node("Conv", ["x", "wc"], ["y"]), helper.make_node("MatMul", ["y", "wm"], ["z"])]
    weights = [
        helper.make_tensor("wc", TensorProto.FLOAT, [conv_weights], [0.0] * conv_weights),
        helper.make_tensor("wm", TensorProto.FLOAT, [matmul_weights], [0.0] * matmul_weights),
    ]
    return helper.make_model(helper.make_graph(nodes, "g", [], [], initializer=weights))


def test_auto_follows_the_weight_mass_not_the_presence_of_a_conv():
    cnn, vit_like = graph(300, 100), graph(48, 4096)  # a ViT's patch Conv holds ~1% of its weights
    assert weight_share(cnn, "Conv") == 0.75
    assert resolve_scheme(OnnxQuantSpec(), cnn) == "int8_static"
    assert resolve_scheme(OnnxQuantSpec(), vit_like) == "int8_dynamic"


def test_int8_dynamic_on_a_conv_model_advises_static():
    advice = scheme_advice(OnnxQuantSpec(scheme="int8_dynamic"), graph(300, 100))
    assert advice.startswith("int8_dynamic leaves convolutions in float (75% of this model's weights are Conv)")
    assert "scheme: int8_static (or auto)" in advice
    assert scheme_advice(OnnxQuantSpec(scheme="int8_dynamic"), graph(48, 4096)) is None
    assert scheme_advice(OnnxQuantSpec(scheme="int8_static"), graph(300, 100)) is None


def test_int8_dynamic_on_a_cnn_records_the_advice(tmp_path):
    make_model, make_data = TINY_ARCHS["residual_cnn"]
    variants = [{"scheme": "int8_dynamic", "name": "q"}]
    recipe = {"passes": [{"pass": "quantize", "onnx": variants}], "export": {"baseline": False}}
    result = compress.run(make_model(), recipe, make_data(), out_dir=tmp_path, report=False)
    record = {a["name"]: a for a in result.artifacts}["q"]
    assert record["status"] == "passed"
    assert "use scheme: int8_static (or auto)" in record["scheme_advice"]
