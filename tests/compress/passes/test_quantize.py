"""quantize (torch side): bitsandbytes int8/nf4/fp4 on CPU, skip lists, the budget, resume, recipe checks."""

import pytest
import torch

import compress
from compress.core.errors import RecipeError, SelectionError
from compress.models.evaluate import Evaluator
from compress.passes.quantize import QuantizeConfig
from compress.quant.bnb import float_copy, quantized_layers
from compress.recipe.schema import parse_recipe
from tests.tiny_models import MLP, vector_data

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SQNR_FLOOR_DB = {"int8": 30.0, "nf4": 15.0, "fp4": 12.0}


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    return float(10 * torch.log10(reference.pow(2).sum() / (reference - approx).pow(2).sum()))


def wide_mlp(outlier_layer: str | None = None) -> MLP:
    """An MLP whose layers bitsandbytes can pack (widths divide the block and CPU tile sizes).

    ``outlier_layer`` gets one huge weight per row, on input feature 0, which the data keeps at
    zero: the function is unchanged, but the outlier sets the row's scale and wipes out its codes."""
    torch.manual_seed(0)
    model = MLP(features=64, hidden=64, classes=32).eval()
    if outlier_layer:
        with torch.no_grad():
            model.get_submodule(outlier_layer).weight[:, 0] = 50.0
    return model


def fidelity(reference: torch.nn.Module) -> Evaluator:
    """Higher is better: minus 1000 x the output MSE against the float model (sensitive to every layer)."""

    def score(predict, batches) -> float:
        errors = [(predict(x) - reference(x)).pow(2).mean() for x, _ in batches]
        return -1000 * float(torch.stack(errors).mean())

    return Evaluator("fidelity", score)


def quantize_run(model, tmp_path, evaluator=None, **params):
    recipe = [{"pass": "quantize", "onnx": [], **params}]
    data = vector_data(features=64, classes=32)
    for x, _ in data.eval:
        x[:, 0] = 0.0
    return compress.run(model, recipe, data, out_dir=tmp_path / "run", evaluator=evaluator, export=False), data


@pytest.mark.parametrize("scheme", ["int8", "nf4", "fp4"])
def test_bitsandbytes_schemes_run_on_cpu_above_sqnr_floor(scheme, tmp_path):
    reference = wide_mlp()
    result, data = quantize_run(wide_mlp(), tmp_path, bitsandbytes={"scheme": scheme})
    assert quantized_layers(result.model) == ["fc1", "fc2"]
    x = data.eval[0][0]
    with torch.no_grad():
        assert sqnr_db(reference(x), result.model(x)) >= SQNR_FLOOR_DB[scheme]
        # export sees the float weights the quantized layers hold, and computes the same function
        assert sqnr_db(result.model(x), float_copy(result.model)(x)) >= 25.0
    assert result.stages[-1].record["bitsandbytes"] == {"scheme": scheme, "layers": ["fc1", "fc2"], "float_layers": []}


def test_skip_keeps_named_layers_float(tmp_path):
    result, _ = quantize_run(wide_mlp(), tmp_path, bitsandbytes={"scheme": "nf4", "skip": ["fc2"]})
    assert quantized_layers(result.model) == ["fc1"]
    assert type(result.model.fc2) is torch.nn.Linear


def test_four_bit_block_that_does_not_divide_a_layer_is_named(tmp_path):
    recipe = [{"pass": "quantize", "onnx": [], "bitsandbytes": {"scheme": "nf4", "block_size": 128}}]
    with pytest.raises(SelectionError, match=r"layer\(s\) fc1, fc2 do not fit.*bitsandbytes\.skip"):
        compress.run(wide_mlp(), recipe, vector_data(features=64, classes=32), out_dir=tmp_path / "run", export=False)


@pytest.mark.parametrize("scheme", ["int8", "nf4"])
def test_budget_falls_back_the_sensitive_layer(scheme, tmp_path):
    reference = wide_mlp("fc1")
    evaluator = fidelity(reference)
    spec = {"scheme": scheme}
    unbounded, _ = quantize_run(wide_mlp("fc1"), tmp_path / "all", evaluator, bitsandbytes=spec)
    full_drop = -unbounded.stages[-1].metric
    budget = full_drop / 10
    result, _ = quantize_run(wide_mlp("fc1"), tmp_path / "budget", evaluator, bitsandbytes=spec, max_metric_drop=budget)
    record = result.stages[-1].record
    assert record["budget"]["met"] is True and record["budget"]["drop"] <= budget
    assert record["budget"]["sensitivity"]["fc1"] > record["budget"]["sensitivity"]["fc2"]
    # the cheap ranking (output SQNR, each layer alone on calibration data) agrees by a wide margin
    sqnr = record["budget"]["sqnr_db"]
    assert (
        sqnr["fc1"] < sqnr["fc2"] - 10.0 and record["budget"]["candidates"] == 2
    )  # both layers: fewer than the 8 allowed
    assert record["bitsandbytes"]["float_layers"] == ["fc1"] and quantized_layers(result.model) == ["fc2"]


def test_budget_measures_only_the_lowest_sqnr_candidate(tmp_path):
    evaluator = fidelity(wide_mlp("fc1"))
    result, _ = quantize_run(
        wide_mlp("fc1"),
        tmp_path,
        evaluator,
        bitsandbytes={"scheme": "nf4"},
        max_metric_drop=0.0,
        sensitivity_candidates=1,
    )
    budget = result.stages[-1].record["budget"]
    assert list(budget["sensitivity"]) == ["fc1"] and set(budget["sqnr_db"]) == {"fc1", "fc2"}
    assert budget["float_layers"] == ["fc1"] and budget["evaluations"] == 1 + 1 + 1


def test_budget_that_cannot_be_met_keeps_the_best_variant_and_says_so(tmp_path):
    evaluator = fidelity(wide_mlp("fc1"))
    result, _ = quantize_run(wide_mlp("fc1"), tmp_path, evaluator, bitsandbytes={"scheme": "nf4"}, max_metric_drop=0.0)
    budget = result.stages[-1].record["budget"]
    assert budget["met"] is False and budget["float_layers"] == ["fc1"] and budget["drop"] > 0.0


def test_resume_requantizes_the_same_layers(tmp_path):
    first, data = quantize_run(wide_mlp(), tmp_path, bitsandbytes={"scheme": "int8"})
    again, _ = quantize_run(wide_mlp(), tmp_path, bitsandbytes={"scheme": "int8"})
    assert again.stages[-1].resumed
    x = data.eval[0][0]
    with torch.no_grad():
        assert torch.equal(first.model(x), again.model(x))
    assert quantized_layers(again.model) == ["fc1", "fc2"]


def test_onnx_twin_follows_the_torch_scheme():
    assert QuantizeConfig().onnx_variants()[0].scheme == "auto"
    twin = QuantizeConfig(bitsandbytes={"scheme": "nf4", "block_size": 128}).onnx_variants()[0]
    assert (twin.scheme, twin.block_size, twin.opset) == ("int4", 128, 21)
    assert QuantizeConfig(bitsandbytes={"scheme": "int8"}).onnx_variants()[0].scheme == "int8_dynamic"
    budgeted = QuantizeConfig(max_metric_drop=0.5, onnx=[{"scheme": "int4", "opset": 21}]).onnx_variants()[0]
    assert budgeted.max_metric_drop == 0.5


def test_int4_embeddings_with_an_opset_below_21_is_refused():
    doc = {"passes": [{"pass": "quantize", "onnx": [{"scheme": "int4"}]}], "export": {"opset": 18}}
    with pytest.raises(RecipeError, match=r"passes\[0\] \(quantize\): onnx\[0\].*opset >= 21.*export.opset: 21"):
        parse_recipe(doc)
    parse_recipe({**doc, "export": {"opset": 21}})
    parse_recipe({"passes": [{"pass": "quantize", "onnx": [{"scheme": "int4", "quantize_embeddings": False}]}]})


def test_torchscript_variant_above_opset_20_is_refused():
    with pytest.raises(RecipeError, match="torchscript exporter stops at opset 20"):
        parse_recipe({"passes": [{"pass": "quantize", "onnx": [{"exporter": "torchscript", "opset": 21}]}]})


def test_torch_4bit_model_exports_a_4bit_twin_and_reports_both_metrics(tmp_path):
    from tests.tiny_models import tiny_bert, token_data

    recipe = {"passes": [{"pass": "quantize", "bitsandbytes": {"scheme": "nf4", "block_size": 32}}]}
    result = compress.run(tiny_bert(), recipe, token_data(), out_dir=tmp_path)
    artifacts = {a["name"]: a for a in result.artifacts}
    assert quantized_layers(result.model)  # the torch model itself is 4-bit
    assert artifacts["compressed"]["status"] == "passed"  # the float twin computes what the 4-bit layers do
    twin = artifacts["compressed-int4"]
    assert twin["status"] == "passed" and twin["quantization"]["block_size"] == 32 and twin["opset"] == 21
    assert twin["size_bytes"] < 0.5 * artifacts["baseline"]["size_bytes"]
    report = (tmp_path / "report.md").read_text()
    torch_metric = f"{result.stages[-1].metric:.4f}"
    assert f"| compressed-int4 | int4 | {twin['metric']['value']:.4f} | {torch_metric} |" in report


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bitsandbytes CUDA kernels)")
@pytest.mark.parametrize("scheme", ["int8", "nf4", "fp4"])
def test_bitsandbytes_schemes_on_cuda(scheme, tmp_path):
    reference = wide_mlp().cuda()
    result, data = quantize_run(wide_mlp().cuda(), tmp_path, bitsandbytes={"scheme": scheme})
    x = data.eval[0][0].cuda()
    with torch.no_grad():
        assert result.model.fc1.weight.device.type == "cuda"
        assert sqnr_db(reference(x), result.model(x).float()) >= SQNR_FLOOR_DB[scheme]
