"""qat: fake quantization that ONNX Runtime's int8 QDQ artifact reproduces, bounded training, bad configs."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import compress
from compress.core.errors import ModelpressError, RecipeError, SelectionError
from compress.quant.fake_quant import QuantizedLayer, quantized_layers
from compress.recipe.schema import parse_recipe
from export.onnx.runtime import make_session
from tests.tiny_models import DepthwiseSeparableCNN, image_data, seeded

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

# Four quantized layers (stem conv, depthwise, pointwise, head), the three BatchNorms folded away:
# a Q/DQ pair on each layer's input and output, an int8 weight and an int32 bias per layer.
LAYERS = 4
EXPECTED_OPS = {"QuantizeLinear": 2 * LAYERS, "DequantizeLinear": 2 * LAYERS + 2 * LAYERS, "Conv": 3, "Gemm": 1}


def qat_run(tmp_path, export=True, **params):
    # 7-bit weights: the one-step parity below then holds on every CPU (x86 without VNNI saturates at 8)
    qat = {"pass": "qat", "epochs": 1, "max_steps": 2, "alpha": 1.0, "reduce_range": True, **params}
    recipe = {"name": "qat", "passes": [qat]}
    model = seeded(DepthwiseSeparableCNN)()
    data = image_data(batches=4, batch_size=16)
    return compress.run(model.eval(), recipe, data, out_dir=tmp_path / "run", export=export, report=False), data


@pytest.fixture(scope="module")
def run_with_artifact(tmp_path_factory):
    return qat_run(tmp_path_factory.mktemp("qat"))


def test_ort_int8_artifact_matches_the_fake_quant_model_within_one_output_step(run_with_artifact):
    result, data = run_with_artifact
    model = result.model.eval()
    step = float(list(quantized_layers(model).values())[-1].output_quant.scale)
    session = make_session(result.out_dir / "artifacts" / "compressed-int8_qat.onnx")
    worst = 0.0
    for x, _ in data.eval:
        with torch.no_grad():
            expected = model(x).numpy()
        actual = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        worst = max(worst, float(np.abs(expected - actual).max()))
    assert worst <= step + 1e-6, f"ORT differs from the fake-quant model by {worst}, more than one step {step}"
    record = next(a for a in result.artifacts if a["name"] == "compressed-int8_qat")
    assert record["status"] == "passed"
    assert record["parity"]["max_abs_diff"] <= step + 1e-6
    assert record["parity"]["reference"] == "fake-quant torch model"
    assert record["quantized_nodes"] == LAYERS and record["float_nodes"] == []


def test_artifact_holds_int8_weights_and_the_qdq_layout_of_quantize_static(run_with_artifact):
    result, _ = run_with_artifact
    graph = onnx.load(str(result.out_dir / "artifacts" / "compressed-int8_qat.onnx")).graph
    ops = {op: sum(node.op_type == op for node in graph.node) for op in EXPECTED_OPS}
    assert ops == EXPECTED_OPS
    assert not any(node.op_type == "BatchNormalization" for node in graph.node)
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    assert sum(value.dtype == np.int8 and value.ndim >= 2 for value in initializers.values()) == LAYERS
    assert not any(value.dtype == np.float32 and value.ndim >= 2 for value in initializers.values())
    producers = {out: node.op_type for node in graph.node for out in node.output}
    layers = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    assert all(producers.get(name) == "DequantizeLinear" for node in layers for name in node.input)
    biases = [
        initializers[name.removesuffix("_dequantized") + "_quantized"] for node in layers for name in node.input[2:]
    ]
    assert len(biases) == LAYERS and all(bias.dtype == np.int32 for bias in biases)


def test_int8_codes_are_the_fake_quant_codes(run_with_artifact):
    result, _ = run_with_artifact
    layer = result.model.get_submodule("head")
    assert isinstance(layer, QuantizedLayer)
    weight = layer.layer.weight.detach()
    expected = torch.round(weight / layer.weight_quant.scale[:, None]).to(torch.int8).numpy()
    graph = onnx.load(str(result.out_dir / "artifacts" / "compressed-int8_qat.onnx")).graph
    codes = [
        numpy_helper.to_array(i)
        for i in graph.initializer
        if i.name.endswith("_quantized") and i.dims == list(weight.shape)
    ]
    assert len(codes) == 1
    np.testing.assert_array_equal(codes[0], expected)


def test_fp32_compressed_artifact_has_no_fake_quantization(run_with_artifact):
    result, _ = run_with_artifact
    graph = onnx.load(str(result.out_dir / "artifacts" / "compressed.onnx")).graph
    assert not any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node)
    assert next(a for a in result.artifacts if a["name"] == "compressed")["status"] == "passed"


def test_training_is_bounded_by_steps_and_recorded(tmp_path):
    result, _ = qat_run(tmp_path, export=False, max_steps=3, epochs=5)
    record = result.stages[-1].record
    assert record["steps"] == 3 and record["planned_steps"] == 3
    assert record["quantized_layers"] == ["stem.0", "depthwise", "pointwise", "head"]
    assert record["folded_batchnorms"] == [["stem.0", "stem.1"], ["depthwise", "bn_dw"], ["pointwise", "bn_pw"]]


def test_resume_restores_folds_and_quantizers(tmp_path):
    first, data = qat_run(tmp_path, export=False)
    again, _ = qat_run(tmp_path, export=False)
    assert again.stages[-1].resumed
    x = data.eval[0][0]
    with torch.no_grad():
        assert torch.equal(first.model(x), again.model(x))


def test_excluded_layer_stays_float(tmp_path):
    result, _ = qat_run(tmp_path, exclude=["head"])
    assert isinstance(result.model.get_submodule("head"), torch.nn.Linear)
    record = next(a for a in result.artifacts if a["name"] == "compressed-int8_qat")
    assert record["quantized_nodes"] == LAYERS - 1
    assert len(record["float_nodes"]) == 1 and record["op_counts"]["Gemm"] == 1


def test_learned_ranges_train_the_scales_and_the_artifact_still_matches(tmp_path):
    """LSQ: the activation scales move away from the calibrated ones, and ORT reproduces the result."""
    observed, _ = qat_run(tmp_path / "observed", export=False, lr=1e-2, max_steps=4)
    learned, data = qat_run(tmp_path / "learned", lr=1e-2, max_steps=4, learn_ranges=True)
    assert learned.stages[-1].record["learn_ranges"] is True
    layers = quantized_layers(learned.model)
    assert all(layer.input_quant.learned_scale.requires_grad for layer in layers.values())
    calibrated = observed.stages[-1].record["activation_qparams"]
    trained = learned.stages[-1].record["activation_qparams"]
    moved = [abs(trained[n]["output"][0] / calibrated[n]["output"][0] - 1) for n in layers]
    assert max(moved) > 0.01, f"learned scales did not move from the observed ones: {moved}"
    for name, layer in layers.items():  # the buffer the export reads is the learned scale
        assert float(layer.output_quant.scale) == pytest.approx(float(layer.output_quant.learned_scale.abs()))
        assert trained[name]["output"][0] == pytest.approx(float(layer.output_quant.scale))
    record = next(a for a in learned.artifacts if a["name"] == "compressed-int8_qat")
    step = float(list(layers.values())[-1].output_quant.scale)
    assert record["status"] == "passed" and record["parity"]["max_abs_diff"] <= step + 1e-6
    again, _ = qat_run(tmp_path / "learned", export=False, lr=1e-2, max_steps=4, learn_ranges=True)
    assert again.stages[-1].resumed
    with torch.no_grad():
        assert torch.equal(learned.model(data.eval[0][0]), again.model(data.eval[0][0]))


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"max_seconds": 10}, RecipeError, "remove max_seconds"),
        ({"averaging_constant": 0}, RecipeError, "averaging_constant"),
        ({"opset": 21}, RecipeError, "opset"),
        ({"exclude": ["nothing"]}, SelectionError, "nothing"),
    ],
)
def test_bad_config_is_a_clear_error(params, error, message, tmp_path):
    with pytest.raises(error, match=message):
        if error is RecipeError:
            parse_recipe({"passes": [{"pass": "qat", **params}]})
        else:
            qat_run(tmp_path, export=False, **params)
    assert issubclass(error, ModelpressError)
