"""Edge readiness: ORT-format conversion with its required-operators config, and provider support."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from export.measure.edge import merge_support, provider_support, to_ort_format
from export.onnx.exporter import to_onnx
from tests.tiny_models import TINY_ARCHS
from tests.tolerances import FP32_EXPORT_ATOL


def export_cnn(tmp_path):
    model = TINY_ARCHS["residual_cnn"][0]()
    path = tmp_path / "cnn.onnx"
    to_onnx(model, torch.randn(2, 1, 8, 8), path)
    return path, {"input": np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)}


def test_ort_format_runs_like_the_onnx_file_and_lists_its_operators(tmp_path):
    path, inputs = export_cnn(tmp_path)
    facts = to_ort_format(path)
    ort_path = tmp_path / facts["path"]
    assert ort_path.name == "cnn.ort" and ort_path.read_bytes()[4:8] == b"ORTM"  # flatbuffer file identifier
    assert facts["size_bytes"] == ort_path.stat().st_size
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    actual = ort.InferenceSession(str(ort_path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]
    np.testing.assert_allclose(actual, expected, atol=FP32_EXPORT_ATOL["residual_cnn"], rtol=0)
    config = (tmp_path / facts["required_operators_config"]).read_text()
    assert str(tmp_path) not in config  # no temporary paths in the shipped file
    # Every line is domain;opset;ops, and the ops cover the graph's convolutions (fused on CPU).
    assert all(len(line.split(";")) == 3 for line in facts["required_operators"])
    assert operators(facts) & {"Conv", "FusedConv"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "cnn.ort", "cnn.required_operators.config"]


def test_a_path_relative_to_the_working_directory_converts(tmp_path, monkeypatch):
    """``modelpress run --out runs/x`` hands relative paths; the converter runs in its own cwd."""
    export_cnn(tmp_path)
    monkeypatch.chdir(tmp_path)
    facts = to_ort_format(Path("cnn.onnx"))
    assert (tmp_path / facts["path"]).read_bytes()[4:8] == b"ORTM"


def operators(facts) -> set[str]:
    return {op for line in facts["required_operators"] for op in line.split(";")[2].split(",")}


def test_runtime_optimization_style_keeps_portable_operators(tmp_path):
    path, _ = export_cnn(tmp_path)
    # fixed: fused for the CPU provider now; runtime: plain Conv kept for NNAPI/CoreML to take at load time.
    assert "Conv" not in operators(to_ort_format(path, "fixed"))
    assert "Conv" in operators(to_ort_format(path, "runtime"))


def test_cpu_provider_runs_every_node_and_a_missing_provider_is_not_checked(tmp_path):
    path, inputs = export_cnn(tmp_path)
    cpu, cuda = provider_support(path, ["CPUExecutionProvider", "NoSuchExecutionProvider"], inputs)
    assert cpu["checked"] and cpu["supported"] and cpu["fallback_ops"] == {}
    graph_nodes = len(onnx.load(str(path)).graph.node)
    assert 1 <= cpu["nodes"] <= graph_nodes  # the optimized graph: fusions only remove nodes
    assert cuda == {
        "provider": "NoSuchExecutionProvider",
        "checked": False,
        "reason": "not available in this onnxruntime install",
    }


def test_a_check_from_another_machine_survives_a_machine_that_cannot_check():
    checked = {"provider": "CUDAExecutionProvider", "checked": True, "supported": True, "nodes": 5, "fallback_ops": {}}
    unchecked = {"provider": "CUDAExecutionProvider", "checked": False, "reason": "not available"}
    cpu = {"provider": "CPUExecutionProvider", "checked": True, "supported": True, "nodes": 5, "fallback_ops": {}}
    assert merge_support([checked], [cpu, unchecked]) == [checked, cpu]
    assert merge_support([unchecked], [checked]) == [checked]
