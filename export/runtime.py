"""ONNX Runtime sessions and feeding them with modelpress batches."""

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compress.data import flatten_inputs


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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


def ort_predictor(session):
    """``predict(inputs) -> Tensor`` running the session, for evaluators and parity."""

    def predict(inputs):
        return torch.from_numpy(session.run(None, feed(inputs))[0])

    return predict
