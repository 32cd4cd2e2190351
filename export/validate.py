"""Parity of an ONNX artifact against its torch source on held-out inputs.

Reports the largest absolute difference, the smallest per-sample cosine similarity
and, for classifiers, the share of samples with the same top-1 class. Any figure
beyond the recipe's tolerance fails the check, with the figure in the message.
"""

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from compress.data import batch_size_of
from compress.evaluate import torch_predictor
from compress.recipe import ParitySpec
from export.errors import ShapeMismatch, ToleranceExceeded
from export.runtime import ort_predictor


@dataclass
class ParityResult:
    passed: bool
    max_abs_diff: float
    min_cosine: float
    top1_agreement: float | None
    samples: int
    tolerances: dict
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_outputs(
    model: torch.nn.Module, session, input_batches: Iterable, tolerance: ParitySpec, classifier: bool
) -> ParityResult:
    """Run torch and ORT on the same inputs (up to ``tolerance.samples``) and compare."""
    torch_predict, ort_predict = torch_predictor(model), ort_predictor(session)
    max_diff, min_cos, agree, samples = 0.0, 1.0, 0, 0
    for inputs in input_batches:
        expected, actual = torch_predict(inputs).float(), ort_predict(inputs).float()
        if expected.shape != actual.shape:
            raise ShapeMismatch(
                f"output shape differs: torch {tuple(expected.shape)} vs ONNX Runtime {tuple(actual.shape)}"
            )
        max_diff = max(max_diff, float((expected - actual).abs().max()))
        cos = torch.nn.functional.cosine_similarity(expected.flatten(1), actual.flatten(1), dim=1, eps=1e-12)
        min_cos = min(min_cos, float(cos.min()))
        same = expected.argmax(-1) == actual.argmax(-1)
        agree += int(same.reshape(same.shape[0], -1).all(1).sum())
        samples += batch_size_of(inputs)
        if samples >= tolerance.samples:
            break
    top1 = agree / samples if classifier and samples else None
    failures = []
    if max_diff > tolerance.atol:
        failures.append(f"max abs diff {max_diff:.3g} > atol {tolerance.atol:g}")
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
    )


def validate(model, session, input_batches, tolerance: ParitySpec, classifier: bool = False) -> ParityResult:
    """Like ``compare_outputs`` but raises ToleranceExceeded when the check fails."""
    result = compare_outputs(model, session, input_batches, tolerance, classifier)
    if not result.passed:
        raise ToleranceExceeded("ONNX Runtime vs torch: " + "; ".join(result.failures))
    return result
