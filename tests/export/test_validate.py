"""Parity checks: figures, tolerances, typed errors."""

import pytest
import torch

from compress.recipe import ParitySpec
from export.errors import ShapeMismatch, ToleranceExceeded
from export.onnx_export import to_onnx
from export.runtime import make_session
from export.validate import compare_outputs, validate
from tests.tiny_models import mlp, vector_data


@pytest.fixture
def session(tmp_path):
    return make_session(to_onnx(mlp(), torch.randn(2, 12), tmp_path / "m.onnx").path)


def inputs():
    return [batch[0] for batch in vector_data().eval]


def test_same_model_passes_with_tiny_differences(session):
    result = validate(mlp(), session, inputs(), ParitySpec(atol=1e-5), classifier=True)
    assert result.passed and result.failures == []
    assert result.max_abs_diff < 1e-5
    assert result.min_cosine > 0.99999
    assert result.top1_agreement == 1.0
    assert result.samples == 24


def test_samples_limit_is_respected(session):
    assert compare_outputs(mlp(), session, inputs(), ParitySpec(samples=8), classifier=False).samples == 8


def test_different_model_fails_with_figures(session):
    other = mlp()
    with torch.no_grad():
        other.fc2.weight.mul_(-1)
    result = compare_outputs(other, session, inputs(), ParitySpec(), classifier=True)
    assert not result.passed
    assert result.top1_agreement < 0.5
    assert any(f.startswith("max abs diff") for f in result.failures)
    assert any(f.startswith("min cosine") for f in result.failures)
    with pytest.raises(ToleranceExceeded, match=r"ONNX Runtime vs torch: max abs diff [0-9.e+-]+ > atol 0\.0001"):
        validate(other, session, inputs(), ParitySpec(), classifier=True)


def test_shape_mismatch_is_typed(session):
    class Wider(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 7)

    with pytest.raises(ShapeMismatch, match=r"torch \(8, 7\) vs ONNX Runtime \(8, 4\)"):
        compare_outputs(Wider(), session, inputs(), ParitySpec(), classifier=False)
