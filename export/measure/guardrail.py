"""Guardrails: flag an artifact that is not faster or not smaller than the baseline or its source, or whose
parity is weak.

Users' top complaint about compression is "the compressed model is slower". The report never hides
it: every artifact is compared with the baseline and with the artifact it was built from (pruned
fp32 ``compressed`` with ``baseline``; int8 with its fp32 source), at every batch size measured in
ONNX Runtime, and a loss comes with a measured cause: the op types whose time grew in ONNX Runtime's
profiler, and hints read from the file (``export/measure/profile.py``), never text chosen by scheme.
Parity that passed only narrowly (or failed) is flagged too: "accuracy collapsed in the runtime".
"""

from pathlib import Path
from typing import Any

from compress.models.data import take_rows
from export.measure.benchmark import fresh, latency_key
from export.onnx.runtime import feed

# A provider's own limit, named beside the profile (which runs on the CPU).
PROVIDER_NOTES = {"CUDAExecutionProvider": "CUDAExecutionProvider has no int8 kernels for these ops (use TensorRT)"}
# An artifact at or above this share of its reference's size is "not smaller": a quantized file
# that keeps more than half of its fp32 source's bytes left its weights (or most of them) in float.
MAX_SIZE_RATIO = {"fp32": 1.0}
QUANTIZED_MAX_SIZE_RATIO = 0.5
PROFILED_PROVIDER = "CPUExecutionProvider"


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


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


class Causes:
    """Measured causes, each artifact profiled once per batch size and thread count. Without the run
    folder or an input sample the causes say they were not measured."""

    def __init__(self, root: Path | None, sample: Any):
        self.root, self.sample = root, sample
        self._times: dict[tuple, dict[str, float]] = {}
        self._hints: dict[tuple, dict[str, str]] = {}
        self.fired: dict[str, set[str]] = {}  # artifact -> names of the file hints given to it

    def _op_times(self, record: dict, batch_size: int, threads: int) -> dict[str, float]:
        from export.measure.profile import op_times

        key = record["name"], batch_size, threads
        if key not in self._times:
            inputs = feed(take_rows(self.sample, batch_size))
            self._times[key] = op_times(self.root / record["path"], inputs, threads)
        return self._times[key]

    def hints(self, record: dict, reference: dict) -> str:
        from export.measure.profile import file_hints

        if self.root is None:
            return ""
        key = record["name"], reference["name"]
        if key not in self._hints:  # read each pair of files once, however many warnings it has
            try:
                self._hints[key] = file_hints(self.root / record["path"], self.root / reference["path"], record)
            except Exception as exc:  # noqa: BLE001  (a missing or unreadable file: the finding stands)
                self._hints[key] = {"unread": f"files not read ({_first_line(exc)})"}
        self.fired.setdefault(record["name"], set()).update(self._hints[key])
        return "".join(f"; hint: {text}" for text in self._hints[key].values())

    def slower(self, record: dict, reference: dict, entry: dict) -> str:
        from export.measure.profile import grown_ops

        note = PROVIDER_NOTES.get(entry["provider"], "") if "scheme" in record else ""
        if self.root is None or self.sample is None:
            cause = "not profiled (no run folder or inputs given)"
        else:
            try:
                threads = entry.get("threads") or 1
                times = self._op_times(record, entry["batch_size"], threads)
                cause = grown_ops(times, self._op_times(reference, entry["batch_size"], threads))
                if entry["provider"] != PROFILED_PROVIDER:
                    cause += f" (profiled on {PROFILED_PROVIDER})"
            except Exception as exc:  # noqa: BLE001  (a cause that cannot be measured must not fail the run)
                cause = f"not profiled ({_first_line(exc)})"
        return (f"{note}; " if note else "") + cause + self.hints(record, reference)

    def larger(self, record: dict, reference: dict) -> str:
        from export.measure.profile import float_weight_shares

        try:
            shares = float_weight_shares(self.root / record["path"]) if self.root else ""
        except Exception as exc:  # noqa: BLE001  (as in hints)
            shares = f"file not read ({_first_line(exc)})"
        return (shares or "file not read") + self.hints(record, reference)


def references(record: dict, by_name: dict[str, dict]) -> list[dict]:
    """What an artifact must beat: the baseline and the artifact it was built from (each once). A
    byte-identical file is no compression step (a quantize-only recipe's ``compressed``): not compared."""
    names = dict.fromkeys(n for n in ("baseline", record.get("source_artifact")) if n and n != record["name"])
    found = [by_name[n] for n in names if n in by_name and "path" in by_name[n]]
    return [r for r in found if not record.get("sha256") or r.get("sha256") != record["sha256"]]


def _compare(record: dict, reference: dict, causes: Causes) -> list[str]:
    warnings = []
    # ONNX Runtime rows only: the artifacts are ONNX files; torch rows time their torch sources.
    # Stale rows (not re-measured by ``modelpress report``) are another run's figures: no finding now.
    ort_rows = [e for e in fresh(reference.get("latency", [])) if e["runtime"] == "onnxruntime"]
    reference_entries = {latency_key(e): e for e in ort_rows}
    for entry in fresh(record.get("latency", [])):
        base = reference_entries.get(latency_key(entry)) if entry["runtime"] == "onnxruntime" else None
        if base is None or entry["p50_ms"] - base["p50_ms"] < noise(entry, base):
            continue
        warnings.append(
            f"not faster than {reference['name']} at batch {entry['batch_size']} on {entry['provider']} "
            f"({entry['p50_ms']:.3f} vs {base['p50_ms']:.3f} ms p50); cause: {causes.slower(record, reference, entry)}"
        )
    ratio = MAX_SIZE_RATIO.get(record.get("precision", "fp32"), QUANTIZED_MAX_SIZE_RATIO)
    size, reference_size = record.get("size_bytes", 0), reference.get("size_bytes")
    if reference_size and size >= ratio * reference_size:
        warnings.append(
            f"not smaller than {reference['name']} ({size:,} vs {reference_size:,} bytes, "
            f"{size / reference_size:.2f}x; the bound is {ratio}x): {causes.larger(record, reference)}"
        )
    return warnings


def flag_artifacts(records: list[dict], root: Path | None = None, sample: Any = None) -> None:
    """Set ``warnings`` on every record: weak or failed parity; an artifact not faster or not smaller
    than the baseline or its source, with the cause profiled on the files under ``root`` at the
    batch size of the finding (``sample``: model inputs, cycled to that batch size)."""
    by_name = {r["name"]: r for r in records}
    causes = Causes(root, sample)
    for record in records:
        record["warnings"] = _parity_warnings(record)
        if record.get("status") != "passed" or "path" not in record:
            continue
        for reference in references(record, by_name):
            record["warnings"] += _compare(record, reference, causes)
        # The quantizer's advice (set when the scheme was chosen) stands unless a file hint said it.
        if record.get("scheme_advice") and "float_conv" not in causes.fired.get(record["name"], set()):
            record["warnings"].append(record["scheme_advice"])
