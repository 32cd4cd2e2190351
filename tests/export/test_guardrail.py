"""The speed/size guardrail: a quantized artifact that is not faster or not smaller is flagged, with a cause."""

import pytest

from export.guardrail import flag_slow_or_large


def latency(p50_by_batch: dict[int, float], provider="CPUExecutionProvider") -> list[dict]:
    return [{"provider": provider, "batch_size": b, "p50_ms": p50} for b, p50 in p50_by_batch.items()]


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
    flag_slow_or_large(batch)
    assert batch[1]["warnings"] == [] and "warnings" not in batch[0]


@pytest.mark.parametrize(
    ("scheme", "quantization", "cause"),
    [
        ("int8_static", {}, "Quantize/DequantizeLinear pairs"),
        ("int8_dynamic", {}, "quantizes activations at run time"),
        ("int4", {"accuracy_level": 0}, "set accuracy_level: 4"),
        ("int4", {"accuracy_level": 4}, "unpacking costs more"),
    ],
)
def test_slower_batch_is_flagged_with_its_likely_cause(scheme, quantization, cause):
    batch = records(scheme, {1: 1.0, 32: 55.0}, **quantization)
    flag_slow_or_large(batch)
    (warning,) = batch[1]["warnings"]
    assert warning.startswith("not faster than compressed at batch 32") and "55.000 vs 40.000 ms" in warning
    assert cause in warning


def test_no_int8_kernels_on_cuda_is_named():
    batch = records("int8_dynamic", {1: 3.0}, provider="CUDAExecutionProvider")
    flag_slow_or_large(batch)
    assert any("CUDAExecutionProvider has no int8 kernels" in w for w in batch[1]["warnings"])


def test_not_smaller_is_flagged():
    batch = records("int4", {1: 1.0, 32: 20.0}, size=100)
    flag_slow_or_large(batch)
    assert batch[1]["warnings"] == [
        "not smaller than compressed (100 vs 100 bytes): no weight matched the scheme's ops "
        "(int4 quantizes MatMul/Gather, not Gemm or Conv)"
    ]
