"""ONNX Runtime sessions and feeding them with modelpress batches."""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.models.data import flatten_inputs
from compress.recipe.schema import usable_cores


def default_threads() -> int:
    return usable_cores()


def make_session(path: Path, threads: int | None = None, provider: str = "CPUExecutionProvider"):
    """An inference session with all graph optimizations and a fixed thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=[provider])


def feed(inputs: Any) -> dict[str, np.ndarray]:
    names, tensors = flatten_inputs(inputs)
    return {name: t.detach().cpu().numpy() for name, t in zip(names, tensors)}


def fixed_batch_size(session) -> int | None:
    """The batch size an artifact exported with fixed input shapes takes; None when the axis is dynamic."""
    first = session.get_inputs()[0].shape[0]
    return first if isinstance(first, int) else None


def _run_in_chunks(session, inputs: Any, size: int) -> list[np.ndarray]:
    """All outputs, run in chunks of the fixed batch ``size``, the last one padded by repeating its rows."""
    names, tensors = flatten_inputs(inputs)
    rows = int(tensors[0].shape[0])
    outputs = []
    for start in range(0, rows, size):
        index = torch.arange(start, start + size).clamp(max=rows - 1)
        chunk = {name: t[index].detach().cpu().numpy() for name, t in zip(names, tensors)}
        outputs.append([out[: rows - start] for out in session.run(None, chunk)])
    return [np.concatenate(parts) for parts in zip(*outputs)]


def ort_outputs_predictor(session):
    """``predict(inputs) -> list[Tensor]``, every output of the session in file order. An artifact
    with fixed input shapes gets its inputs in chunks of its batch size."""
    size = fixed_batch_size(session)

    def predict(inputs):
        outputs = session.run(None, feed(inputs)) if size is None else _run_in_chunks(session, inputs, size)
        return [torch.from_numpy(np.asarray(out)) for out in outputs]

    return predict


def ort_predictor(session):
    """``predict(inputs) -> Tensor``: the first output (the one evaluators score)."""
    predict_all = ort_outputs_predictor(session)
    return lambda inputs: predict_all(inputs)[0]
