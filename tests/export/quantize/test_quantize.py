"""Quantized ONNX artifacts: each scheme's graph, calibration methods, auto choice, the budget, failures."""

import collections
import re

import onnx
import pytest
import torch

import compress
from compress.models.evaluate import Evaluator
from compress.passes.quantize import OnnxQuantSpec
from export.quantize import onnx_quant as quantize_module
from export.quantize.onnx_quant import resolve_scheme
from tests.tiny_models import TINY_ARCHS


def op_counts(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def quantized(arch: str, tmp_path, variants: list[dict], evaluator=None, **params):
    """Run the quantize pass on a tiny architecture; return {artifact name: record}."""
    make_model, make_data = TINY_ARCHS[arch]
    recipe = {"passes": [{"pass": "quantize", "onnx": variants, **params}], "export": {"opset": 21}}
    result = compress.run(make_model(), recipe, make_data(), out_dir=tmp_path, evaluator=evaluator, report=False)
    return {a["name"]: a for a in result.artifacts}, result


def test_int8_dynamic_quantizes_every_weight_matmul_and_shrinks_the_file(tmp_path):
    artifacts, result = quantized("tiny_bert", tmp_path, [{"scheme": "int8_dynamic"}])
    record, fp32 = artifacts["compressed-int8_dynamic"], artifacts["compressed"]
    assert record["status"] == "passed" and record["precision"] == "int8"
    ops = op_counts(tmp_path / record["path"])
    fp32_ops = op_counts(tmp_path / fp32["path"])
    # every weight MatMul of the fp32 graph became an integer MatMul; none is left in float
    assert ops["MatMulInteger"] == record["quantized_nodes"] - ops["DequantizeLinear"] > 0
    assert ops["MatMul"] == fp32_ops["MatMul"] - ops["MatMulInteger"]
    assert record["size_bytes"] < 0.6 * fp32["size_bytes"]
    assert record["parity"]["min_cosine"] >= 0.99


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_int8_static_qdq_with_each_calibration_method(method, tmp_path):
    spec = {"scheme": "int8_static", "calibration": {"method": method, "samples": 16}}
    artifacts, _ = quantized("residual_cnn", tmp_path, [spec])
    record = artifacts["compressed-int8_static"]
    assert record["status"] == "passed", record.get("error")
    ops = op_counts(tmp_path / record["path"])
    assert ops["Conv"] == 2 and ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]
    assert record["quantization"]["calibration"]["method"] == method
    assert record["parity"]["min_cosine"] >= 0.95


def test_int4_packs_matmuls_and_the_embedding_table(tmp_path):
    artifacts, _ = quantized("tiny_bert", tmp_path, [{"scheme": "int4", "block_size": 16}])
    record, fp32 = artifacts["compressed-int4"], artifacts["compressed"]
    assert record["status"] == "passed" and record["precision"] == "int4" and record["opset"] == 21
    ops = op_counts(tmp_path / record["path"])
    assert ops["MatMulNBits"] > 0 and ops["GatherBlockQuantized"] >= 1
    assert ops["MatMulNBits"] + ops["GatherBlockQuantized"] == record["quantized_nodes"]
    assert record["size_bytes"] < 0.4 * fp32["size_bytes"]
    assert record["parity"]["min_cosine"] >= 0.95


def test_int8_with_int4_embeddings_packs_the_tables_in_blocks(tmp_path):
    variants = [
        {"scheme": "int8_dynamic", "name": "int8"},
        {"scheme": "int8_dynamic", "name": "int8-e4", "int4_embeddings": True, "block_size": 16},
    ]
    artifacts, _ = quantized("tiny_bert", tmp_path, variants)
    int8, mixed = artifacts["int8"], artifacts["int8-e4"]
    assert mixed["status"] == "passed" and mixed["opset"] == 21
    int8_ops, mixed_ops = op_counts(tmp_path / int8["path"]), op_counts(tmp_path / mixed["path"])
    assert mixed_ops["MatMulInteger"] == int8_ops["MatMulInteger"] > 0  # the matmuls stay int8
    assert mixed_ops["GatherBlockQuantized"] == int8_ops["Gather"] - mixed_ops["Gather"] >= 1
    assert mixed["size_bytes"] < int8["size_bytes"]
    assert mixed["parity"]["min_cosine"] >= 0.95


def test_int4_embeddings_without_a_table_fails_that_artifact(tmp_path):
    artifacts, _ = quantized("mlp", tmp_path, [{"scheme": "int8_dynamic", "name": "e4", "int4_embeddings": True}])
    assert artifacts["e4"]["status"] == "failed"
    assert "no Gather over a weight table" in artifacts["e4"]["error"]


def test_int4_embeddings_needs_int8_dynamic():
    with pytest.raises(ValueError, match="int4_embeddings applies to scheme int8_dynamic"):
        OnnxQuantSpec(scheme="int8_static", int4_embeddings=True)


def test_auto_picks_static_for_convolutions_and_dynamic_otherwise(tmp_path):
    conv_ops = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["x", "w"], ["y"])], "g", [], [])
    dense_ops = onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [], [])
    assert resolve_scheme(OnnxQuantSpec(), onnx.helper.make_model(conv_ops)) == "int8_static"
    assert resolve_scheme(OnnxQuantSpec(), onnx.helper.make_model(dense_ops)) == "int8_dynamic"
    assert resolve_scheme(OnnxQuantSpec(scheme="int4"), onnx.helper.make_model(conv_ops)) == "int4"


def fidelity(reference: torch.nn.Module) -> Evaluator:
    """Higher is better: minus 1e6 x the output MSE against the float torch model."""

    def score(predict, batches) -> float:
        with torch.no_grad():
            errors = [(predict(x) - reference(**x)).pow(2).mean() for x, _ in batches]
        return -1e6 * float(torch.stack(errors).mean())

    return Evaluator("fidelity", score)


def test_budget_keeps_the_most_sensitive_nodes_in_float(tmp_path):
    """Exhaustive mode (``sensitivity_candidates: all``): the metric is measured for every node."""
    make_model, _ = TINY_ARCHS["tiny_bert"]
    evaluator = fidelity(make_model())
    spec = {"scheme": "int8_dynamic", "per_channel": False}
    unbounded, _ = quantized("tiny_bert", tmp_path / "all", [spec], evaluator)
    artifacts, _ = quantized(
        "tiny_bert", tmp_path / "budget", [spec], evaluator, max_metric_drop=1e-9, sensitivity_candidates="all"
    )
    record = artifacts["compressed-int8_dynamic"]
    budget = record["budget"]
    assert record["float_nodes"] and budget["float_layers"] == record["float_nodes"]
    ranked = sorted(budget["sensitivity"], key=budget["sensitivity"].get, reverse=True)
    assert record["float_nodes"] == ranked[: len(record["float_nodes"])]
    graph = onnx.load(str(tmp_path / "budget" / record["path"]))
    float_matmuls = {n.name for n in graph.graph.node if n.op_type in ("MatMul", "Gather")}
    assert set(record["float_nodes"]) <= float_matmuls
    assert record["quantized_nodes"] == unbounded["compressed-int8_dynamic"]["quantized_nodes"] - len(
        record["float_nodes"]
    )
    assert len(budget["sensitivity"]) == record["quantized_nodes"] + len(record["float_nodes"])
    assert budget["sqnr_db"] == {} and budget["candidates"] is None


def outlier_cnn():
    """The tiny residual CNN whose second conv has one weight 200x its largest: one per-tensor int8
    scale then flattens the rest of that conv's weights to a few codes."""
    make_model, _ = TINY_ARCHS["residual_cnn"]
    model = make_model()
    with torch.no_grad():
        model.conv.weight[0, 0, 0, 0] = 200 * model.conv.weight.abs().max()
    return model


def test_cheap_ranking_puts_the_large_range_conv_first_and_measures_only_the_candidates(tmp_path):
    reference = outlier_cnn()
    evaluator = Evaluator(
        "fidelity",
        lambda predict, batches: (
            -1e6 * float(torch.stack([(predict(x) - reference(x)).pow(2).mean() for x, _ in batches]).mean())
        ),
    )
    spec = {"scheme": "int8_static", "per_channel": False, "calibration": {"samples": 16}}
    recipe = {"passes": [{"pass": "quantize", "onnx": [spec], "max_metric_drop": 1e-9, "sensitivity_candidates": 1}]}
    make_data = TINY_ARCHS["residual_cnn"][1]
    with torch.no_grad():
        result = compress.run(outlier_cnn(), recipe, make_data(), out_dir=tmp_path, evaluator=evaluator, report=False)
    record = next(a for a in result.artifacts if a["name"] == "compressed-int8_static")
    budget = record["budget"]
    sqnr = budget["sqnr_db"]
    assert len(sqnr) == 3 and all(value is not None for value in sqnr.values())  # stem conv, conv, head
    conv = min(sqnr, key=sqnr.get)
    graph = onnx.load(str(tmp_path / record["path"]))
    assert conv in {n.name for n in graph.graph.node if n.op_type == "Conv"}  # kept float, so still a Conv
    assert sqnr[conv] < min(v for name, v in sqnr.items() if name != conv) - 10.0  # by a wide margin
    assert list(budget["sensitivity"]) == [conv] and budget["candidates"] == 1
    # the candidate first, then the next lowest SQNR; a budget of 1e-9 is out of reach, so every trial runs:
    # the full variant, one candidate, two fallback trials (of three layers, one stays quantized)
    assert budget["float_layers"] == sorted(sqnr, key=sqnr.get)[:2] and not budget["met"]
    assert budget["evaluations"] == 1 + 1 + 2


def test_a_quantizer_failure_is_recorded_not_raised(tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("Unable to find data type for weight_name='w'")

    monkeypatch.setitem(quantize_module.SCHEMES, "int8_dynamic", broken)
    artifacts, result = quantized("mlp", tmp_path, [{"scheme": "int8_dynamic"}])
    record = artifacts["compressed-int8_dynamic"]
    assert record["status"] == "failed"
    assert "onnxruntime.quantization (int8_dynamic) failed" in record["error"] and "exclude_ops" in record["error"]
    assert artifacts["compressed"]["status"] == "passed"  # the fp32 artifacts are kept
    assert not (tmp_path / "artifacts" / "compressed-int8_dynamic.onnx").exists()
    assert result.failures == [f"compressed-int8_dynamic: {record['error']}"]


def test_an_excluded_name_the_graph_lacks_fails_that_artifact_and_names_real_ones(tmp_path):
    artifacts, _ = quantized("mlp", tmp_path, [{"scheme": "int8_dynamic", "exclude_nodes": ["fc9/MatMul"]}])
    record = artifacts["compressed-int8_dynamic"]
    assert record["status"] == "failed" and artifacts["compressed"]["status"] == "passed"
    assert "has no int8_dynamic weight node 'fc9/MatMul'" in record["error"]
    named = re.findall(r"'([^']+)'", record["error"].split("named like", 1)[1])
    fp32_nodes = {n.name for n in onnx.load(str(tmp_path / artifacts["compressed"]["path"])).graph.node}
    assert named and set(named) <= fp32_nodes  # the names offered are the fp32 graph's own
