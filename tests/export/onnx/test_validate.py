"""Parity checks: figures, tolerances, typed errors."""

import pytest
import torch

from compress.recipe.schema import ParitySpec
from export.errors import ShapeMismatch, ToleranceExceeded
from export.onnx.exporter import to_onnx
from export.onnx.runtime import make_session
from export.onnx.validate import compare_outputs, cosine, top1_matches, validate
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


def _exported(model, tmp_path, name="m"):
    return make_session(to_onnx(model, torch.randn(2, 12), tmp_path / f"{name}.onnx").path)


def test_nan_output_fails_with_the_cause(tmp_path):
    # A checkpoint with a negative BatchNorm running_var: sqrt of a negative number on both sides.
    model = torch.nn.Sequential(torch.nn.Linear(12, 4), torch.nn.BatchNorm1d(4)).eval()
    model[1].running_var.fill_(-1.0)
    result = compare_outputs(model, _exported(model, tmp_path), inputs(), ParitySpec(), classifier=True)
    assert not result.passed
    assert "torch output output holds NaN" in result.failures
    assert "ONNX Runtime output output holds NaN" in result.failures


def test_inf_output_fails_with_the_cause(tmp_path):
    class Overflow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(12, 4)
            with torch.no_grad():
                self.fc.weight.fill_(1e38)

        def forward(self, x):
            return self.fc(x.abs() + 1.0)

    model = Overflow().eval()
    result = compare_outputs(model, _exported(model, tmp_path), inputs(), ParitySpec(), classifier=False)
    assert not result.passed
    assert result.failures[:2] == ["ONNX Runtime output output holds Inf", "torch output output holds Inf"]


def test_agreeing_tiny_outputs_pass(tmp_path):
    model = mlp()
    with torch.no_grad():
        model.fc2.weight.mul_(1e-25)
        model.fc2.bias.mul_(1e-25)
    with torch.no_grad():
        assert 1e-27 < float(model(inputs()[0]).abs().max()) < 1e-23
    result = compare_outputs(model, _exported(model, tmp_path), inputs(), ParitySpec(), classifier=False)
    assert result.passed, result.failures
    assert result.min_cosine > 0.9999 and result.max_abs_diff < 1e-30


def test_cosine_of_zero_rows_and_opposite_rows():
    zeros, ones = torch.zeros(2, 3), torch.ones(2, 3)
    assert cosine(zeros, zeros).tolist() == [1.0, 1.0]
    assert cosine(ones, -ones).tolist() == pytest.approx([-1.0, -1.0], abs=1e-12)
    assert cosine(zeros, ones).tolist() == [0.0, 0.0]


class TwoHeads(torch.nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.fc, self.aux, self.scale = torch.nn.Linear(12, 4), torch.nn.Linear(12, 3), scale

    def forward(self, x):
        return {"logits": self.fc(x), "aux": self.aux(x) * self.scale}


def test_two_output_model_exports_and_compares_both(tmp_path):
    torch.manual_seed(0)
    model = TwoHeads()
    exported = to_onnx(model, torch.randn(2, 12), tmp_path / "two.onnx")
    assert exported.output_names == ["output_logits", "output_aux"]
    session = make_session(exported.path)
    assert [(o.name, o.shape[1]) for o in session.get_outputs()] == [("output_logits", 4), ("output_aux", 3)]
    result = compare_outputs(model, session, inputs(), ParitySpec(), classifier=True)
    assert result.passed and set(result.outputs) == {"output_logits", "output_aux"}
    # The second output alone differs: parity sees it.
    other = TwoHeads(scale=2.0)
    other.load_state_dict(model.state_dict())
    result = compare_outputs(other, session, inputs(), ParitySpec(), classifier=True)
    assert not result.passed and result.top1_agreement == 1.0
    assert result.outputs["output_logits"]["max_abs_diff"] < 1e-5
    assert result.outputs["output_aux"]["max_abs_diff"] > 1e-2


@pytest.mark.parametrize("field, value", [("atol", float("inf")), ("min_cosine", -1.0), ("min_top1_agreement", 0.0)])
def test_tolerances_that_switch_a_check_off_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        ParitySpec(**{field: value})


def test_top1_of_a_segmentation_map_is_per_pixel_over_the_channel_axis():
    # [B, C, H, W] one-hot class maps: noise far below the class margin keeps every pixel's class, while
    # argmax over the width (the last axis) flips between tied columns: it is not the class axis.
    truth = torch.randint(0, 5, (2, 8, 8), generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.one_hot(truth, 5).permute(0, 3, 1, 2).float()
    actual = expected + 0.01 * torch.rand(expected.shape, generator=torch.Generator().manual_seed(1))
    assert top1_matches(expected, actual) == (2 * 8 * 8, 2 * 8 * 8)
    assert (expected.argmax(-1) == actual.argmax(-1)).float().mean() < 0.9
    tokens = torch.randn(2, 6, 11)  # [B, T, vocab]: per token over the last axis
    assert top1_matches(tokens, tokens) == (12, 12)


def test_atol_is_relative_beyond_unit_magnitude(tmp_path):
    # The same model with its outputs 1000x larger: fp32 rounding grows with them, and so does the
    # tolerance (atol x the largest |output|); a real difference still fails, named with the magnitude.
    big = mlp()
    with torch.no_grad():
        big.fc2.weight.mul_(1000)
        big.fc2.bias.mul_(1000)
    exported = _exported(big, tmp_path, "big")
    result = compare_outputs(big, exported, inputs(), ParitySpec(atol=1e-6), classifier=True)
    assert result.passed, result.failures
    with torch.no_grad():
        big.fc2.bias[0] += 1.0
    result = compare_outputs(big, exported, inputs(), ParitySpec(atol=1e-6), classifier=True)
    assert any(f.startswith("max abs diff 1 > atol 1e-06 x output magnitude") for f in result.failures)
