"""ONNX Runtime sessions and feeding them with modelpress batches.

A decoder exported with its KV cache (``export/decoder``) is measured like any artifact, as one
forward pass over the batch: ``feed(inputs, session)`` adds what the batch does not hold, an empty
past and the positions ``generate()`` would give, and the predictors return every output but the
``present.*`` cache.
"""

from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.models.data import fixed_batches, flatten_inputs
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


PRESENT_PREFIX = "present."


def feed(inputs: Any, session=None) -> dict[str, np.ndarray]:
    """A batch as ONNX Runtime takes it; with ``session``, completed for a decoder with its KV cache."""
    names, tensors = flatten_inputs(inputs)
    arrays = {name: t.detach().cpu().numpy() for name, t in zip(names, tensors)}
    return arrays if session is None else complete_feed(session, arrays)


def complete_feed(session, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` plus the inputs a decoder-with-past declares and one forward pass does not carry: each
    layer's past, empty ([batch, kv heads, 0, head size]), and ``position_ids`` 0, 1, 2, ... along the
    sequence, as the torch model numbers them when called without positions (the same call parity
    compares with, padded slots included: right padding leaves the real tokens' positions alone).
    Other files: unchanged."""
    missing = {i.name for i in session.get_inputs()} - set(arrays)
    if not missing or "input_ids" not in arrays:
        return arrays
    from export.decoder.parity import empty_past

    batch, length = arrays["input_ids"].shape
    extra = {name: past for name, past in empty_past(session, batch).items() if name in missing}
    if "position_ids" in missing:
        extra["position_ids"] = np.broadcast_to(np.arange(length, dtype=np.int64), (batch, length)).copy()
    return {**arrays, **extra}


def scored_outputs(session) -> list[str]:
    """The outputs a batch is judged on: all but a decoder's ``present.*`` cache."""
    return [o.name for o in session.get_outputs() if not o.name.startswith(PRESENT_PREFIX)]


def fixed_batch_size(session) -> int | None:
    """The batch size an artifact exported with fixed input shapes takes; None when the axis is dynamic."""
    first = session.get_inputs()[0].shape[0]
    return first if isinstance(first, int) else None


def file_batch_size(path: Path) -> int | None:
    """``fixed_batch_size`` of an ONNX file, read without its weights and without a session."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {init.name for init in graph.initializer}
    dims = next(i for i in graph.input if i.name not in weights).type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") else None


def _run_in_chunks(session, inputs: Any, size: int) -> list[np.ndarray]:
    """All outputs, run in chunks of the fixed batch ``size``, the last one filled up by repeating its last row."""
    rows = int(flatten_inputs(inputs)[1][0].shape[0])
    outputs = []
    for start, chunk in zip(range(0, rows, size), fixed_batches(inputs, size)):
        outputs.append([out[: rows - start] for out in session.run(scored_outputs(session), feed(chunk))])
    return [np.concatenate(parts) for parts in zip(*outputs)]


def ort_outputs_predictor(session):
    """``predict(inputs) -> list[Tensor]``, every scored output of the session in file order. An artifact
    with fixed input shapes gets its inputs in chunks of its batch size."""
    size = fixed_batch_size(session)
    names = scored_outputs(session)

    def predict(inputs):
        if size is not None:
            outputs = _run_in_chunks(session, inputs, size)
        else:
            outputs = session.run(names, feed(inputs, session))
        return [torch.from_numpy(np.asarray(out)) for out in outputs]

    return predict


def ort_predictor(session):
    """``predict(inputs) -> Tensor``: the first output (the one evaluators score)."""
    predict_all = ort_outputs_predictor(session)
    return lambda inputs: predict_all(inputs)[0]
