"""The guardrail: a quantized artifact not faster or not smaller is flagged with a cause; weak parity too."""

import pytest

from export.guardrail import flag_artifacts


def latency(p50_by_batch: dict[int, float], provider="CPUExecutionProvider") -> list[dict]:
    return [
        {"device_name": "cpu0", "runtime": "onnxruntime", "provider": provider, "batch_size": b, "p50_ms": p50}
        for b, p50 in p50_by_batch.items()
    ]


def records(scheme: str, quantized_p50: dict, size=25, provider="CPUExecutionProvider", **quantization):
    source = {"name": "compressed", "status": "passed", "size_bytes": 100, "latency": latency({1: 2.0, 32: 40.0})}
    artifact = {
        "name": "q",
        "status": "passed",
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


@pytest.mark.parametrize(
    ("scheme", "quantization", "cause"),
    [
        ("int8_static", {}, "Quantize/DequantizeLinear nodes around the int8 kernels"),
        ("int8_dynamic", {}, "quantizes activations at run time"),
        ("int4", {"accuracy_level": 0}, "set accuracy_level: 4"),
        ("int4", {"accuracy_level": 4}, "unpacking costs more"),
    ],
)
def test_slower_batch_is_flagged_with_its_likely_cause(scheme, quantization, cause):
    batch = records(scheme, {1: 1.0, 32: 55.0}, **quantization)
    flag_artifacts(batch)
    (warning,) = batch[1]["warnings"]
    assert warning.startswith("not faster than compressed at batch 32") and "55.000 vs 40.000 ms" in warning
    assert cause in warning


def test_no_int8_kernels_on_cuda_is_named():
    batch = records("int8_dynamic", {1: 3.0}, provider="CUDAExecutionProvider")
    flag_artifacts(batch)
    assert any("CUDAExecutionProvider has no int8 kernels" in w for w in batch[1]["warnings"])


def test_not_smaller_is_flagged():
    batch = records("int4", {1: 1.0, 32: 20.0}, size=100)
    flag_artifacts(batch)
    assert batch[1]["warnings"] == [
        "not smaller than compressed (100 vs 100 bytes): no weight matched the scheme's ops "
        "(int4 quantizes MatMul/Gather, not Gemm or Conv)"
    ]


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
