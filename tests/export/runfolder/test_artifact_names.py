"""One naming rule for quantized artifacts, whichever path asked for them."""

from compress.passes import OnnxQuantSpec, QuantizeConfig
from export.quantize.variants import variant_name
from tests.tiny_models import TINY_ARCHS


def _names(config: QuantizeConfig, model) -> list[str]:
    return [variant_name(spec, model) for spec in config.onnx_variants()]


def test_auto_named_schemes_and_twins_share_one_rule():
    cnn, mlp = TINY_ARCHS["residual_cnn"][0](), TINY_ARCHS["mlp"][0]()
    # auto is named by the scheme it picks: static for convolutions, dynamic otherwise.
    assert _names(QuantizeConfig(), cnn) == ["compressed-int8_static"]
    assert _names(QuantizeConfig(), mlp) == ["compressed-int8_dynamic"]
    # ...the same names as when the scheme is written out, or reached as a torch-side twin.
    assert _names(QuantizeConfig(onnx=[OnnxQuantSpec(scheme="int8_static")]), cnn) == ["compressed-int8_static"]
    assert _names(QuantizeConfig(bitsandbytes={"scheme": "int8"}), mlp) == ["compressed-int8_dynamic"]
    assert _names(QuantizeConfig(bitsandbytes={"scheme": "nf4"}), mlp) == ["compressed-int4"]
    # A name given in the recipe wins (the demo names its variant int8).
    assert _names(QuantizeConfig(onnx=[OnnxQuantSpec(scheme="int8_static", name="int8")]), cnn) == ["int8"]
