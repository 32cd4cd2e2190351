"""The speed guardrail for decoder artifacts: a quantized decoder whose decode step is not faster than
its fp32 ONNX source is flagged, with the cause ONNX Runtime's profiler measures.

Nothing is re-implemented: the generation benchmark's decode timings become ``benchmark.Latency``
entries (``generation.latency_entries``: ms per decode step), the artifacts become the records
``guardrail.flag_artifacts`` reads, and its ``Causes`` profile one decode step of each file (a
one-token input over a zero past of ``past_tokens``, the shape decoding runs in) and read the
file hints of ``profile.FILE_HINTS`` (for MatMulNBits: its ``accuracy_level``).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from export.measure.generation import GenerationReport, latency_entries


@dataclass(frozen=True)
class DecoderArtifact:
    """A benchmarked ONNX row: its file, precision and the row it was quantized from (None: the source)."""

    row: str
    path: Path
    precision: str
    source: str | None = None


def decode_step_sample(path: Path, past_tokens: int) -> dict[str, torch.Tensor]:
    """Inputs of one decode step at batch 1: a token over a zero past of ``past_tokens`` positions."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sample = {"input_ids": torch.tensor([[3]]), "attention_mask": torch.ones(1, past_tokens + 1, dtype=torch.long)}
    for spec in session.get_inputs():
        if spec.name == "position_ids":
            sample["position_ids"] = torch.tensor([[past_tokens]])
        elif spec.name.startswith("past_key_values."):
            sample[spec.name] = torch.zeros(1, spec.shape[1], past_tokens, spec.shape[3])
    return sample


def _record(artifact: DecoderArtifact, root: Path, report: GenerationReport) -> dict:
    record = {
        "name": artifact.row,
        "path": str(Path(artifact.path).resolve().relative_to(root)),
        "status": "passed",
        "precision": artifact.precision,
        "latency": latency_entries(report, artifact.row),
        "size_bytes": Path(artifact.path).stat().st_size,
    }
    if artifact.source is not None:
        record |= {"source_artifact": artifact.source, "scheme": f"{artifact.precision} weight-only"}
    return record


def flag_decoders(
    report: GenerationReport, artifacts: list[DecoderArtifact], root: Path, past_tokens: int = 32
) -> dict[str, list[str]]:
    """Row -> guardrail warnings (not faster or not smaller than its source, with the profiled cause).
    Every artifact's file must lie under ``root``."""
    from export.measure.guardrail import flag_artifacts

    root = Path(root).resolve()
    records = [_record(artifact, root, report) for artifact in artifacts]
    flag_artifacts(records, root, decode_step_sample(artifacts[0].path, past_tokens))
    return {record["name"]: record["warnings"] for record in records}
