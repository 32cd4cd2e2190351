"""Parity of an ONNX artifact against its torch source on held-out inputs.

Every output of the model is compared (by position, named after the file's outputs). Reports the
largest absolute difference, the smallest per-sample cosine similarity and, for classifiers, the
share of samples with the same top-1 class (on the first output). NaN or Inf on either side fails
with that cause named: NaN compares false with everything, so it would otherwise slip through.
Any figure beyond the recipe's tolerance fails the check, with the figure in the message.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from compress.models.data import batch_size_of, call_model, model_device, to_device
from compress.recipe.schema import ParitySpec, Recipe
from export.errors import ShapeMismatch, ToleranceExceeded
from export.onnx.exporter import output_tensors
from export.onnx.runtime import ort_outputs_predictor, scored_outputs


@dataclass
class ParityResult:
    passed: bool
    max_abs_diff: float
    min_cosine: float
    top1_agreement: float | None
    samples: int
    tolerances: dict
    failures: list[str] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def torch_outputs_predictor(model: torch.nn.Module):
    """``predict(inputs) -> list[Tensor]``: every tensor output, in the order the exporter writes them."""

    @torch.no_grad()
    def predict(inputs):
        output = call_model(model, to_device(inputs, model_device(model)))
        return [t.cpu() for _, t in output_tensors(output)]

    model.eval()
    return predict


def cosine(expected: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine, scale-free: each pair of rows is divided by its largest magnitude first, so
    that agreeing outputs of 1e-25 agree. Two all-zero rows count as equal (cosine 1)."""
    a, b = expected.double().flatten(1), actual.double().flatten(1)
    scale = torch.maximum(a.abs().amax(1, keepdim=True), b.abs().amax(1, keepdim=True))
    zero = scale.squeeze(1) == 0
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    cos = torch.nn.functional.cosine_similarity(a / scale, b / scale, dim=1, eps=1e-30)
    return torch.where(zero, torch.ones_like(cos), cos)


def _nonfinite(tensor: torch.Tensor) -> str | None:
    if torch.isnan(tensor).any():
        return "NaN"
    return "Inf" if torch.isinf(tensor).any() else None


class _Tally:
    """Running figures of one output over the batches."""

    def __init__(self):
        self.max_diff, self.min_cos, self.nonfinite = 0.0, 1.0, set()
        self.magnitude = 0.0  # the largest |torch output|: fp32 rounding grows with it

    def add(self, name: str, expected: torch.Tensor, actual: torch.Tensor) -> None:
        if expected.shape != actual.shape:
            raise ShapeMismatch(
                f"output {name} shape differs: torch {tuple(expected.shape)} vs ONNX Runtime {tuple(actual.shape)}"
            )
        rows = expected.shape[0] if expected.dim() else 1
        expected, actual = expected.reshape(rows, -1), actual.reshape(rows, -1)
        for side, tensor in (("torch", expected), ("ONNX Runtime", actual)):
            if kind := _nonfinite(tensor):
                self.nonfinite.add(f"{side} output {name} holds {kind}")
        finite = torch.isfinite(expected) & torch.isfinite(actual)
        if finite.any():
            self.max_diff = max(self.max_diff, float((expected - actual).abs()[finite].max()))
            self.magnitude = max(self.magnitude, float(expected.abs()[finite].max()))
        clean = finite.all(1)
        if clean.any():
            self.min_cos = min(self.min_cos, float(cosine(expected[clean], actual[clean]).min()))

    def allowed(self, atol: float) -> float:
        """``atol`` for outputs up to 1 in magnitude, relative beyond: logits of ~19 get 19 x atol (an
        unpruned LeViT differs from its own export by 3e-5 relative, 6e-4 absolute)."""
        return atol * max(1.0, self.magnitude)


def top1_matches(expected: torch.Tensor, actual: torch.Tensor) -> tuple[int, int]:
    """(positions whose argmax agrees, positions) over the class axis: the last one for a classifier's
    rows and a causal LM's tokens (teacher-forced, every token judged on its own), axis 1 for a
    channels-first map of 4+ dims (segmentation: one class per pixel; its last axis is a width)."""
    axis = 1 if expected.dim() >= 4 else -1
    same = expected.argmax(axis) == actual.argmax(axis)
    return int(same.sum()), same.numel()


def compare_outputs(
    model: torch.nn.Module, session, input_batches: Iterable, tolerance: ParitySpec, classifier: bool
) -> ParityResult:
    """Run torch and ORT on the same inputs (up to ``tolerance.samples``) and compare every output."""
    return compare_predictions(torch_outputs_predictor(model), session, input_batches, tolerance, classifier)


def compare_predictions(
    torch_predict, session, input_batches: Iterable, tolerance: ParitySpec, classifier: bool
) -> ParityResult:
    """``compare_outputs`` with the expected outputs from ``torch_predict(inputs) -> list[Tensor]``
    (a live module, or torch outputs stored in the run folder)."""
    ort_predict = ort_outputs_predictor(session)
    names = scored_outputs(session)
    tallies = {name: _Tally() for name in names}
    agree, positions, samples = 0, 0, 0
    for inputs in input_batches:
        expected_all, actual_all = torch_predict(inputs), ort_predict(inputs)
        if len(expected_all) != len(actual_all):
            raise ShapeMismatch(f"torch gives {len(expected_all)} outputs, the ONNX file {len(actual_all)}")
        for name, expected, actual in zip(names, expected_all, actual_all):
            tallies[name].add(name, expected.float(), actual.float())
        same, count = top1_matches(expected_all[0], actual_all[0])
        agree, positions = agree + same, positions + count
        samples += batch_size_of(inputs)
        if samples >= tolerance.samples:
            break
    top1 = agree / positions if classifier and positions else None
    max_diff = max((t.max_diff for t in tallies.values()), default=0.0)
    min_cos = min((t.min_cos for t in tallies.values()), default=1.0)
    failures = sorted({cause for t in tallies.values() for cause in t.nonfinite})
    over = [t for t in tallies.values() if tolerance.atol is not None and t.max_diff > t.allowed(tolerance.atol)]
    if over:
        worst = max(over, key=lambda t: t.max_diff / t.allowed(tolerance.atol))
        scaled = f" x output magnitude {worst.magnitude:.3g}" if worst.magnitude > 1 else ""
        failures.append(f"max abs diff {worst.max_diff:.3g} > atol {tolerance.atol:g}{scaled}")
    if min_cos < tolerance.min_cosine:
        failures.append(f"min cosine {min_cos:.6f} < {tolerance.min_cosine}")
    if top1 is not None and top1 < tolerance.min_top1_agreement:
        failures.append(f"top-1 agreement {top1:.4f} < {tolerance.min_top1_agreement}")
    return ParityResult(
        passed=not failures,
        max_abs_diff=max_diff,
        min_cosine=min_cos,
        top1_agreement=top1,
        samples=samples,
        tolerances=tolerance.model_dump(),
        failures=failures,
        outputs={n: {"max_abs_diff": t.max_diff, "min_cosine": t.min_cos} for n, t in tallies.items()},
    )


def validate(model, session, input_batches, tolerance: ParitySpec, classifier: bool = False) -> ParityResult:
    """Like ``compare_outputs`` but raises ToleranceExceeded when the check fails."""
    result = compare_outputs(model, session, input_batches, tolerance, classifier)
    if not result.passed:
        raise ToleranceExceeded("ONNX Runtime vs torch: " + "; ".join(result.failures))
    return result


def quantized_parity(recipe: Recipe) -> ParitySpec:
    """Quantization is lossy by design: its parity bounds the damage instead of the difference. No
    ``atol`` (recorded as null: not checked, by design); a recipe cannot ask for that, hence
    ``model_construct``. NaN/Inf still fail."""
    parity = recipe.export.parity
    return ParitySpec.model_construct(
        atol=None,
        min_cosine=parity.quantized_min_cosine,
        min_top1_agreement=parity.quantized_min_top1_agreement,
        samples=parity.samples,
    )
