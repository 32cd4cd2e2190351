"""The guardrail: every artifact not faster or not smaller than the baseline or its source is flagged, with
a cause profiled on the real files; weak parity too; the recommendation prefers a clean artifact.

Latency entries are given (so slowness never depends on this machine's speed); the causes come from
ONNX Runtime's profiler run on ONNX files exported here.
"""

import math
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from compress.passes.quantize import OnnxQuantSpec
from export.measure.guardrail import flag_artifacts
from export.measure.profile import FILE_HINTS, grown_ops
from export.onnx.exporter import to_onnx
from export.onnx.scratch import own_cwd
from export.quantize.onnx_quant import _int8_dynamic
from export.report.build import recommend

CPU = "cpu0"


def latency(p50_by_batch: dict[int, float], provider="CPUExecutionProvider") -> list[dict]:
    return [
        {
            "device": "cpu",
            "device_name": CPU,
            "runtime": "onnxruntime",
            "provider": provider,
            "batch_size": b,
            "threads": 1,
            "p50_ms": p50,
        }
        for b, p50 in p50_by_batch.items()
    ]


def records(scheme: str, quantized_p50: dict, size=25, provider="CPUExecutionProvider", **quantization):
    """Records without files (no run folder): only the comparisons and the parity checks are exercised."""
    source = {
        "name": "compressed",
        "path": "compressed.onnx",
        "precision": "fp32",
        "status": "passed",
        "size_bytes": 100,
        "latency": latency({1: 2.0, 32: 40.0}),
    }
    artifact = {
        "name": "q",
        "path": "q.onnx",
        "status": "passed",
        "precision": "int8",
        "scheme": scheme,
        "source_artifact": "compressed",
        "size_bytes": size,
        "quantization": quantization,
        "latency": latency(quantized_p50, provider),
    }
    if provider != "CPUExecutionProvider":
        source["latency"] += latency({1: 2.0, 32: 40.0}, provider)
    return [source, artifact]


def test_faster_and_smaller_gets_no_warning():
    batch = records("int8_dynamic", {1: 1.0, 32: 20.0})
    flag_artifacts(batch)
    assert batch[1]["warnings"] == [] and batch[0]["warnings"] == []


def test_entries_of_another_machine_are_not_compared():
    batch = records("int8_dynamic", {1: 1.0, 32: 55.0})
    for entry in batch[1]["latency"]:
        entry["device_name"] = "another cpu"
    flag_artifacts(batch)
    assert batch[1]["warnings"] == []


def parity(min_cosine, top1=None, passed=True):
    failures = [] if passed else ["min cosine 0.5 < 0.9"]
    return {
        "passed": passed,
        "max_abs_diff": 1.0,
        "min_cosine": min_cosine,
        "top1_agreement": top1,
        "failures": failures,
    }


def test_weak_or_failed_parity_is_flagged():
    batch = records("int8_static", {1: 1.0, 32: 20.0})
    batch[1]["parity"] = parity(0.95, top1=0.97)
    batch[0]["parity"] = parity(0.5, passed=False)
    flag_artifacts(batch)
    assert batch[1]["warnings"] == [
        "parity weak against its torch source (min cosine 0.9500 < 0.99, top-1 agreement 0.9700 < 0.98): "
        "check the metric on your own data"
    ]
    assert batch[0]["warnings"] == ["parity failed against its torch source: min cosine 0.5 < 0.9"]
    batch[1]["parity"] = parity(0.995, top1=0.99)
    flag_artifacts(batch)
    assert batch[1]["warnings"] == []


def test_no_int8_kernels_on_cuda_is_named():
    batch = records("int8_dynamic", {1: 3.0}, provider="CUDAExecutionProvider")
    flag_artifacts(batch)
    assert any("CUDAExecutionProvider has no int8 kernels" in w for w in batch[1]["warnings"])


def test_a_quantized_artifact_above_half_its_source_is_not_smaller():
    batch = records("int4", {1: 1.0, 32: 20.0}, size=60)
    flag_artifacts(batch)
    (warning,) = batch[1]["warnings"]
    assert warning.startswith("not smaller than compressed (60 vs 100 bytes, 0.60x; the bound is 0.5x)")


def test_a_stale_row_is_no_finding_of_this_run():
    batch = records("int8_dynamic", {1: 3.0, 32: 20.0})
    flag_artifacts(batch)
    assert len(batch[1]["warnings"]) == 1  # 3.0 vs 2.0 ms at batch 1, measured now
    for entry in batch[0]["latency"][:1]:  # the reference's batch-1 row was not re-measured
        entry.update(stale=True, stale_reason="not re-measured on this machine")
    flag_artifacts(batch)
    assert batch[1]["warnings"] == []


def test_a_difference_within_the_measured_noise_is_no_warning():
    batch = records("int8_dynamic", {1: 2.01, 32: 20.0})
    for entry in batch[0]["latency"] + batch[1]["latency"]:
        entry.update(p10_ms=entry["p50_ms"] * 0.9, p90_ms=entry["p50_ms"] * 1.1)
    flag_artifacts(batch)
    assert batch[1]["warnings"] == []  # 2.01 vs 2.0 ms with a 0.2 ms spread
    batch = records("int8_dynamic", {1: 3.0, 32: 20.0})
    for entry in batch[0]["latency"] + batch[1]["latency"]:
        entry.update(p10_ms=entry["p50_ms"] * 0.9, p90_ms=entry["p50_ms"] * 1.1)
    flag_artifacts(batch)
    assert len(batch[1]["warnings"]) == 1 and "(3.000 vs 2.000 ms p50)" in batch[1]["warnings"][0]


class NarrowCNN(nn.Module):
    """Many narrow 3x3 convolutions: the shape where odd widths after pruning cost the most."""

    def __init__(self, width: int, layers: int = 8, classes: int = 4):
        super().__init__()
        convs = [nn.Conv2d(3, width, 3, padding=1)] + [nn.Conv2d(width, width, 3, padding=1) for _ in range(layers)]
        self.body = nn.Sequential(*(m for conv in convs for m in (conv, nn.ReLU())))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


SAMPLE = torch.randn(4, 3, 16, 16)


def artifact(root, name: str, p50: dict, **fields) -> dict:
    path = root / f"{name}.onnx"
    return {
        "name": name,
        "path": path.name,
        "status": "passed",
        "precision": "fp32",
        "size_bytes": path.stat().st_size,
        "latency": latency(p50),
        "metric": {"name": "accuracy", "value": 0.9},
        **fields,
    }


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """baseline (width 16), compressed (pruned to width 13, round_to 1) and its int8_dynamic, as ONNX files."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    for name, width in {"baseline": 16, "compressed": 13}.items():
        to_onnx(NarrowCNN(width).eval(), SAMPLE, root / f"{name}.onnx", exporter="torchscript")
    with own_cwd():  # modelpress's own int8_dynamic; its shape inference writes into the cwd
        _int8_dynamic(
            (root / "compressed.onnx").resolve(),
            (root / "compressed-int8_dynamic.onnx").resolve(),
            OnnxQuantSpec(scheme="int8_dynamic"),
            [],
            None,
        )
    return root


def test_a_pruned_cnn_slower_than_its_baseline_gets_the_profiled_cause(run_folder):
    batch = [
        artifact(run_folder, "baseline", {1: 1.0, 4: 3.0}),
        artifact(run_folder, "compressed", {1: 0.8, 4: 4.5}),  # given: slower at batch 4
    ]
    flag_artifacts(batch, run_folder, SAMPLE)
    assert batch[0]["warnings"] == []
    (warning,) = batch[1]["warnings"]
    assert warning.startswith("not faster than baseline at batch 4 on CPUExecutionProvider (4.500 vs 3.000 ms p50)")
    cause = warning.split("cause: ", 1)[1]
    assert "Conv" in cause.split("; hint:")[0] and " ms" in cause  # op types from the profile, with figures
    assert "9 Conv widths are not multiples of 8 (13)" in cause and "round_to: 8 in structured_prune" in cause
    assert "accuracy_level" not in cause and "QAttention" not in cause  # no templated causes
    assert not list(run_folder.glob("*.json")) and not list(Path.cwd().glob("*profile*.json"))  # temp dir only


def test_int8_dynamic_on_a_cnn_is_not_smaller_with_the_int8_static_hint(run_folder):
    advice = "int8_dynamic leaves convolutions in float (99% of this model's weights are Conv): use int8_static"
    batch = [
        artifact(run_folder, "baseline", {4: 3.0}),
        artifact(run_folder, "compressed", {4: 2.0}),
        artifact(
            run_folder,
            "compressed-int8_dynamic",
            {4: 1.9},
            precision="int8",
            scheme="int8_dynamic",
            source_artifact="compressed",
            scheme_advice=advice,
        ),
    ]
    flag_artifacts(batch, run_folder, SAMPLE)
    assert batch[1]["warnings"] == []  # a clean, faster, smaller artifact
    warnings = batch[2]["warnings"]
    assert [w.split(" (")[0] for w in warnings] == ["not smaller than baseline", "not smaller than compressed"]
    for warning in warnings:
        assert "the bound is 0.5x" in warning and "float weights: Conv" in warning
        assert "hint: int8_dynamic left the convolutions in float" in warning and "use int8_static" in warning
    assert advice not in warnings  # folded: the file's hint says it already


def test_the_recommendation_skips_a_warned_artifact_when_a_clean_one_qualifies(run_folder):
    batch = [
        artifact(run_folder, "baseline", {1: 1.0, 4: 3.0}),
        artifact(run_folder, "compressed", {1: 1.5, 4: 2.0}),  # fastest at the headline batch, slower at 1
    ]
    flag_artifacts(batch, run_folder, SAMPLE)
    assert batch[1]["warnings"] and batch[1]["warnings"][0].startswith("not faster than baseline at batch 1")
    assert recommend(batch, 0.01, CPU)["name"] == "baseline"
    for record in batch:
        record["sha256"] = "same"  # a byte-identical file (nothing compressed) is not compared
    flag_artifacts(batch, run_folder, SAMPLE)
    assert batch[1]["warnings"] == []
    batch[1]["warnings"] = ["not faster than baseline (...)"]
    batch[0]["warnings"] = ["parity weak against its torch source (...)"]  # no clean artifact left
    best = recommend(batch, 0.01, CPU)
    assert best["name"] == "compressed" and "every artifact within the budget has warnings" in best["reason"]


def test_the_profile_names_grown_op_types_then_the_largest():
    cause = grown_ops(
        {"Conv": 3.0, "ReorderOutput": 0.5, "Gemm": 0.1}, {"Conv": 3.2, "ReorderOutput": 0.1, "Gemm": 0.1}
    )
    assert cause == "op time grew (profiled, per run): ReorderOutput 0.100 -> 0.500 ms; largest: Conv 3.200 -> 3.000 ms"
    assert grown_ops({"Conv": 1.0}, {"Conv": 2.0}).startswith("no op type's time grew in the profile; largest: Conv")


def graph(nodes, weights=()) -> onnx.ModelProto:
    inits = [helper.make_tensor(name, TensorProto.INT8, dims, [0] * math.prod(dims)) for name, dims in weights]
    return helper.make_model(helper.make_graph(nodes, "g", [], [], initializer=inits))


def hints_of(model) -> dict[str, str]:
    empty = graph([])
    return {name: text for name, check in FILE_HINTS.items() if (text := check(model, empty, {}))}


def test_file_hints_are_read_from_the_graph():
    nbits = helper.make_node("MatMulNBits", ["x", "w"], ["y"], domain="com.microsoft", accuracy_level=0)
    assert set(hints_of(graph([nbits]))) == {"nbits_accuracy_level"}
    nbits4 = helper.make_node("MatMulNBits", ["x", "w"], ["y"], domain="com.microsoft", accuracy_level=4)
    assert hints_of(graph([nbits4])) == {}
    dq = helper.make_node("DequantizeLinear", ["q", "s"], ["x"])
    unfused = hints_of(graph([dq, helper.make_node("LayerNormalization", ["x", "g"], ["y"])]))
    assert "LayerNormalization" in unfused["unfused_qdq"] and "exclude_ops" in unfused["unfused_qdq"]
    assert hints_of(graph([dq, helper.make_node("MatMul", ["x", "w"], ["y"])])) == {}
    # QDQ convolutions: the width is read through the DequantizeLinear in front of the weight
    conv = [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]), helper.make_node("Conv", ["x", "w"], ["y"])]
    assert "round_to: 8" in hints_of(graph(conv, [("wq", [13, 3, 3, 3])]))["odd_conv_widths"]
    assert "odd_conv_widths" not in hints_of(graph(conv, [("wq", [16, 3, 3, 3])]))


def test_a_missing_reference_file_leaves_the_finding_without_a_cause(tmp_path, run_folder):
    batch = [artifact(run_folder, "baseline", {4: 3.0}), artifact(run_folder, "compressed", {4: 4.0})]
    flag_artifacts(batch, tmp_path, SAMPLE)  # a folder without the files
    (warning,) = batch[1]["warnings"]
    assert "not profiled (" in warning and "hint: files not read (" in warning
