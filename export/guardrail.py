"""Guardrails: flag an artifact that is not faster or not smaller than its fp32 source, or whose parity is weak.

Users' top complaint about quantization is "the int8 model is slower than fp32". The
report never hides it: every quantized artifact is compared with the artifact it was
built from, at every measured batch size, and a loss comes with its likely cause.
Parity that passed only narrowly (or failed) is flagged too: "accuracy collapsed in the runtime".
"""

from export.benchmark import latency_key


def _int8_static_cause(record: dict, provider: str) -> str:
    return (
        "static QDQ: the Quantize/DequantizeLinear nodes around the int8 kernels (and those ONNX Runtime "
        "cannot fuse on CPU: attention, normalization) cost more than the int8 math saves at this size; "
        "a small model at batch 1 often stays faster in fp32, and transformer models want int8_dynamic"
    )


def _int8_dynamic_cause(record: dict, provider: str) -> str:
    return (
        "dynamic int8 quantizes activations at run time; at this size that overhead outweighs the int8 "
        "matmuls. Try optimize (fused QAttention) or per_channel: false"
    )


def _int4_cause(record: dict, provider: str) -> str:
    level = (record.get("quantization") or {}).get("accuracy_level")
    if level != 4:
        return f"MatMulNBits with accuracy_level {level} dequantizes to fp32 before each matmul; set accuracy_level: 4"
    return "4-bit weights save memory bandwidth, which pays at batch 1; at large batches the unpacking costs more"


CAUSES = {"int8_static": _int8_static_cause, "int8_dynamic": _int8_dynamic_cause, "int4": _int4_cause}
NO_INT8_KERNELS = {"CUDAExecutionProvider": "CUDAExecutionProvider has no int8 kernels for these ops (use TensorRT)"}


# A quantized artifact whose outputs agree less than this with fp32 passed its (loose) parity
# bounds, but its accuracy in the runtime deserves a look before shipping.
WEAK_COSINE = 0.99
WEAK_TOP1_AGREEMENT = 0.98


def _parity_warnings(record: dict) -> list[str]:
    parity = record.get("parity")
    if parity is None:
        return []
    if not parity["passed"]:
        return [f"parity failed against its torch source: {'; '.join(parity['failures'])}"]
    weak = []
    if "scheme" in record and parity["min_cosine"] < WEAK_COSINE:
        weak.append(f"min cosine {parity['min_cosine']:.4f} < {WEAK_COSINE}")
    if "scheme" in record and (parity.get("top1_agreement") or 1.0) < WEAK_TOP1_AGREEMENT:
        weak.append(f"top-1 agreement {parity['top1_agreement']:.4f} < {WEAK_TOP1_AGREEMENT}")
    if not weak:
        return []
    return [f"parity weak against its torch source ({', '.join(weak)}): check the metric on your own data"]


def noise(*entries: dict) -> float:
    """The measured noise of a comparison: half the widest p10..p90 spread of its entries. A "not
    faster" needs a difference beyond it (0.011 vs 0.011 ms is no finding)."""
    return max((e.get("p90_ms", 0.0) - e.get("p10_ms", e.get("p90_ms", 0.0))) / 2 for e in entries)


def flag_artifacts(records: list[dict]) -> None:
    """Set ``warnings`` on every record: weak or failed parity; a quantized artifact not faster or not
    smaller than its source."""
    by_name = {r["name"]: r for r in records}
    for record in records:
        record["warnings"] = _parity_warnings(record)
        source = by_name.get(record.get("source_artifact", ""))
        if source is None or record.get("status") != "passed":
            continue
        warnings = record["warnings"]
        source_entries = {latency_key(e): e for e in source.get("latency", [])}
        for entry in record.get("latency", []):
            reference = source_entries.get(latency_key(entry))
            if reference is None or entry["p50_ms"] - reference["p50_ms"] < noise(entry, reference):
                continue
            base = reference["p50_ms"]
            provider = entry["provider"]
            cause = NO_INT8_KERNELS.get(provider) or CAUSES[record["scheme"]](record, provider)
            warnings.append(
                f"not faster than {source['name']} at batch {entry['batch_size']} on {provider} "
                f"({entry['p50_ms']:.3f} vs {base:.3f} ms p50); likely cause: {cause}"
            )
        if record.get("size_bytes", 0) >= source.get("size_bytes", float("inf")):
            warnings.append(
                f"not smaller than {source['name']} ({record['size_bytes']:,} vs {source['size_bytes']:,} bytes): "
                "no weight matched the scheme's ops (int4 quantizes MatMul/Gather, not Gemm or Conv)"
            )
