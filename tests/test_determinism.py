"""Reproducibility: the same recipe and seed, run twice on this CPU, gives byte-identical artifacts,
and the manifest records every input and output by sha256."""

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest

import compress
from tests.tiny_models import TINY_ARCHS

pytestmark = pytest.mark.slow

RECIPE = {
    "name": "determinism",
    "seed": 7,
    "passes": [
        {"pass": "structured_prune", "ratio": 0.5, "round_to": 1},  # 8 channels: a real cut needs exact widths
        {"pass": "distill", "epochs": 2, "lr": 1.0e-3},
        {"pass": "quantize", "onnx": [{"scheme": "int8_static", "name": "int8", "calibration": {"samples": 6}}]},
    ],
    # A tiny random-weight model: int8 may move its argmax more than a trained one's.
    "export": {"ort_format": True, "parity": {"quantized_min_top1_agreement": 0.5}},
}


def run_once(out):
    factory, data_factory = TINY_ARCHS["residual_cnn"]
    compress.run(factory(), RECIPE, data_factory(), out_dir=out, report=False)
    return json.loads((out / "manifest.json").read_text())


def test_same_recipe_and_seed_give_byte_identical_artifacts(tmp_path):
    first, second = run_once(tmp_path / "a"), run_once(tmp_path / "b")
    expected = {
        f"artifacts/{name}{suffix}"
        for name in ("baseline", "compressed", "int8")
        for suffix in (".onnx", ".ort", ".required_operators.config")
    } | {"artifacts/heldout.npz", *(f"artifacts/{name}.reference.npz" for name in ("baseline", "compressed"))}
    assert set(first["artifacts"]) == expected
    for path, digest in first["artifacts"].items():
        assert hashlib.sha256((tmp_path / "a" / path).read_bytes()).hexdigest() == digest
        if not path.endswith(".ort"):
            assert second["artifacts"][path] == digest, path
    # ONNX Runtime writes a .ort file's opset table from a hash map, so its byte order varies from
    # one conversion to the next; the model it holds does not: same size, same outputs.
    for name in ("baseline", "compressed", "int8"):
        a, b = (tmp_path / run / "artifacts" / f"{name}.ort" for run in "ab")
        assert a.stat().st_size == b.stat().st_size
        inputs = {"input": np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)}
        outputs = [
            ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, inputs)[0] for p in (a, b)
        ]
        np.testing.assert_array_equal(*outputs)
    assert first["checkpoint"]["weights_sha256"] == second["checkpoint"]["weights_sha256"]
    assert first["seeds"] == {"recipe": 7, "stages": {"structured_prune": 8, "distill": 9, "quantize": 10}}
    assert first["calibration"] == {"int8": {"split": "calibration", "indices": list(range(6))}}
    assert first["recipe"]["sha256"] == second["recipe"]["sha256"]
    assert first["opsets"] == {"baseline": 18, "compressed": 18, "int8": 18}
    assert first["versions"]["onnxruntime"] and first["versions"]["torch"]
