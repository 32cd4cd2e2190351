"""The record of every quantized artifact, whichever way it was built (ONNX Runtime's quantizers or
QAT's folded graph): one builder for its fields, one parity check against its torch reference."""

from pathlib import Path
from typing import Any

import torch

from compress.models.data import TaskData
from compress.models.evaluate import Evaluator
from export.onnx.runtime import make_session
from export.onnx.validate import compare_outputs
from export.runfolder.artifacts import file_facts, graph_facts, heldout_inputs


def quantized_record(
    name: str, path: Path, out_dir: Path, spec, *, precision: str, scheme: str, quantized_nodes: int, **facts: Any
) -> dict:
    """The fields every quantized artifact record holds, then the builder's own ``facts`` (``float_nodes``,
    ``budget``, ``calibration_samples``, ...). Its source is the ``compressed`` fp32 artifact."""
    return {
        "name": name,
        "path": str(path.relative_to(out_dir)),
        "format": "onnx",
        "source_artifact": "compressed",
        "precision": precision,
        "scheme": scheme,
        "quantization": spec.model_dump(mode="json"),
        "quantized_nodes": quantized_nodes,
        **facts,
    }


def checked(
    record: dict, path: Path, reference: torch.nn.Module, tolerance, evaluator: Evaluator, data: TaskData, why: str
) -> dict:
    """``record`` completed with the facts read from the written file and its parity against ``reference``
    on the held-out inputs; failed, with ``why`` and the failures, when that parity does not hold."""
    record = {**record, **graph_facts(path), **file_facts(path)}
    parity = compare_outputs(
        reference, make_session(path), heldout_inputs(evaluator, data), tolerance, evaluator.is_classifier
    )
    record["parity"] = parity.to_dict()
    record["status"] = "passed" if parity.passed else "failed"
    if not parity.passed:
        record["error"] = f"{why}: " + "; ".join(parity.failures)
    return record
