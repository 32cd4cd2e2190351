"""int4 weight-only algorithms: each shipped one packs a tiny BERT's matmuls, runs in ORT above an
SQNR floor, honours exclusions; unknown, unshipped and package-less algorithms are refused clearly."""

import collections
import dataclasses

import numpy as np
import onnx
import pytest
import torch

import compress
from compress.core.errors import InputError
from compress.engine.metrics import sqnr_db
from compress.passes.quantize import OnnxQuantSpec
from export.onnx.runtime import make_session, ort_predictor
from export.quantize import int4_algorithms
from tests.tiny_models import TINY_ARCHS
from tests.tolerances import INT4_ONE_LAYER_SQNR_DB, INT4_SQNR_DB

ALGORITHMS = int4_algorithms.available()
# block_minimum's fp32 MatMuls: one per packed weight (its block minimums) and one per distinct input
# (its block sums: q/k/v share one, then attention output, FFN in, FFN out: 4 per layer, 2 layers)
MINIMUM_MATMULS = {"block_minimum": 12 + 8}


def op_counts(path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_the_installed_runtime_ships_the_algorithms_this_suite_covers():
    # onnxruntime 1.32 ships all five of its own (block_minimum is ours); a runtime without one would drop it.
    assert set(ALGORITHMS) == set(int4_algorithms.ALGORITHMS) == set(INT4_SQNR_DB)


@pytest.fixture(scope="module")
def tiny_bert_int4(tmp_path_factory):
    """One run quantizing a tiny BERT with every shipped algorithm (matmuls only), plus hqq with its tables."""
    out = tmp_path_factory.mktemp("int4")
    make_model, make_data = TINY_ARCHS["tiny_bert"]
    variants = [
        {"scheme": "int4", "name": name, "algorithm": name, "block_size": 16, "quantize_embeddings": False}
        for name in ALGORITHMS
    ]
    variants.append({"scheme": "int4", "name": "hqq-tables", "algorithm": "hqq", "block_size": 16})
    recipe = {"passes": [{"pass": "quantize", "onnx": variants}], "export": {"opset": 21}}
    result = compress.run(make_model(), recipe, make_data(), out_dir=out, report=False)
    return {a["name"]: a for a in result.artifacts}, out, make_data()


def _outputs(path, data) -> torch.Tensor:
    predict = ort_predictor(make_session(path))
    return torch.cat([predict(inputs) for inputs, _ in data.eval])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_packs_every_weight_matmul_above_its_sqnr_floor(algorithm, tiny_bert_int4):
    artifacts, out, data = tiny_bert_int4
    record, fp32 = artifacts[algorithm], artifacts["compressed"]
    assert record["status"] == "passed", record.get("error")
    ops, fp32_ops = op_counts(out / record["path"]), op_counts(out / fp32["path"])
    # 2 layers x (q, k, v, attention output, FFN in, FFN out) weight matmuls; the 4 activation matmuls stay
    assert ops["MatMulNBits"] == record["quantized_nodes"] == 12
    # block_minimum adds small fp32 MatMuls (MINIMUM_MATMULS)
    assert (
        ops["MatMul"]
        == fp32_ops["MatMul"] - 12 + MINIMUM_MATMULS.get(algorithm, 0)
        == 4 + MINIMUM_MATMULS.get(algorithm, 0)
    )
    assert ops["Gather"] >= 1 and ops["GatherBlockQuantized"] == 0  # the tables stay float
    facts = record["int4"]
    assert facts["algorithm"] == algorithm and facts["ops"] == {"MatMul": algorithm}
    assert facts["matmul_nbits"] == 12 and facts["block_sizes"] == [16] and facts["accuracy_levels"] == [4]
    measured = sqnr_db(_outputs(out / fp32["path"], data), _outputs(out / record["path"], data))
    assert measured >= INT4_SQNR_DB[algorithm]


def test_hqq_writes_float_zero_points_and_leaves_the_tables_to_default(tiny_bert_int4):
    artifacts, out, _ = tiny_bert_int4
    hqq, tables = artifacts["hqq"], artifacts["hqq-tables"]
    assert hqq["int4"]["zero_points"] == ["float"]
    assert tables["status"] == "passed", tables.get("error")
    assert tables["int4"]["ops"] == {"MatMul": "hqq", "Gather": "default"}
    ops = op_counts(out / tables["path"])
    assert ops["MatMulNBits"] == 12 and ops["GatherBlockQuantized"] == tables["int4"]["gather_block_quantized"] >= 1
    assert tables["size_bytes"] < hqq["size_bytes"]


def test_gptq_records_the_calibration_rows_it_read(tiny_bert_int4):
    artifacts, _, _ = tiny_bert_int4
    assert artifacts["gptq"]["calibration_samples"] == {"split": "calibration", "indices": [0, 1, 2, 3]}
    assert artifacts["rtn"]["calibration_samples"] is None


def two_matmuls() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x[., 32] -> MatMul "first" -> Relu -> MatMul "second" -> y[., 16], with its inputs and fp32 outputs."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.2, (32, 32)).astype(np.float32), rng.normal(0, 0.2, (32, 16)).astype(np.float32)
    helper = onnx.helper
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="second"),
        ],
        "two",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 16])],
        [onnx.numpy_helper.from_array(w1, "w1"), onnx.numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    x = rng.normal(0, 1, (64, 32)).astype(np.float32)
    return model, x, np.maximum(x @ w1, 0) @ w2


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_leaves_excluded_nodes_in_float(algorithm, tmp_path):
    model, x, reference = two_matmuls()
    spec = OnnxQuantSpec(scheme="int4", algorithm=algorithm, block_size=16)
    calibration = [{"x": x[:32]}, {"x": x[32:]}]
    quantized = int4_algorithms.quantize(model, spec, ["first"], ("MatMul",), calibration)
    path = tmp_path / "q.onnx"
    quantized.save_model_to_file(str(path), False)
    nodes = {node.name: node.op_type for node in onnx.load(str(path)).graph.node}
    assert nodes["first"] == "MatMul" and list(nodes.values()).count("MatMulNBits") == 1
    output = make_session(path).run(None, {"x": x})[0]
    measured = sqnr_db(torch.from_numpy(reference), torch.from_numpy(output))
    assert measured >= INT4_ONE_LAYER_SQNR_DB[algorithm]


def _run_int4(tmp_path, **variant):
    make_model, make_data = TINY_ARCHS["tiny_bert"]
    recipe = {"passes": [{"pass": "quantize", "onnx": [{"scheme": "int4", **variant}]}], "export": {"opset": 21}}
    return compress.run(make_model(), recipe, make_data(), out_dir=tmp_path, report=False)


def test_an_unknown_algorithm_is_refused_listing_the_shipped_ones(tmp_path):
    with pytest.raises(InputError, match=r"'awq' is unknown; choose one of \['default', 'rtn'"):
        _run_int4(tmp_path, algorithm="awq")
    assert not (tmp_path / "artifacts").exists()  # refused when the pass runs, before any export


def test_nvidia_awq_is_refused_with_its_reason():
    with pytest.raises(InputError, match="not supported: it calibrates decoder LLMs.*modelopt"):
        int4_algorithms.require("nvidia_awq")


def test_an_algorithm_whose_package_is_missing_names_it(monkeypatch):
    needy = dataclasses.replace(int4_algorithms.ALGORITHMS["hqq"], requires=("modelpress_no_such_package",))
    monkeypatch.setitem(int4_algorithms.ALGORITHMS, "hqq", needy)
    with pytest.raises(InputError, match="needs the package.*modelpress_no_such_package: pip install"):
        int4_algorithms.require("hqq")


def test_an_algorithm_the_installed_runtime_lacks_is_refused(monkeypatch):
    future = dataclasses.replace(int4_algorithms.ALGORITHMS["rtn"], config_class="FutureWeightOnlyQuantConfig")
    monkeypatch.setitem(int4_algorithms.ALGORITHMS, "rtn", future)
    with pytest.raises(InputError, match=r"does not ship FutureWeightOnlyQuantConfig; choose one of \['default', "):
        int4_algorithms.require("rtn")
    assert "rtn" not in int4_algorithms.available()


@pytest.mark.parametrize("algorithm", ["hqq", "k_quant"])
def test_symmetric_is_refused_where_the_algorithm_always_writes_zero_points(algorithm, tmp_path):
    with pytest.raises(InputError, match=f"'{algorithm}' always writes zero points"):
        _run_int4(tmp_path, algorithm=algorithm, symmetric=True)


def test_gptq_without_calibration_rows_is_refused(tmp_path):
    make_model, make_data = TINY_ARCHS["tiny_bert"]
    data = make_data()
    data.calibration = []
    data.train = []
    variant = {"scheme": "int4", "algorithm": "gptq"}
    recipe = {"passes": [{"pass": "quantize", "onnx": [variant]}], "export": {"opset": 21}}
    with pytest.raises(InputError, match="int4 gptq calibrates weights on the"):
        compress.run(make_model(), recipe, data, out_dir=tmp_path, report=False)


def test_an_algorithm_applies_to_int4_only():
    with pytest.raises(ValueError, match="algorithm hqq applies to scheme int4, not int8_dynamic"):
        OnnxQuantSpec(scheme="int8_dynamic", algorithm="hqq")


def test_the_report_names_a_non_default_algorithm():
    from export.report.render import _scheme

    assert _scheme({"scheme": "int4", "int4": {"algorithm": "hqq"}}) == "int4 (hqq)"
    assert _scheme({"scheme": "int4", "int4": {"algorithm": "default"}}) == "int4"
    assert _scheme({"scheme": "int8_dynamic"}) == "int8_dynamic"
