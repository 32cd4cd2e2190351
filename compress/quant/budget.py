"""The accuracy budget: quantize everything, and if the metric drops too far, fall back the
most sensitive layers to float until the drop fits.

Sensitivity is measured the way users reason about it: the metric drop when only that
layer is quantized. Layers then fall back one at a time, most sensitive first. The same
search serves bitsandbytes layers in torch and weight nodes in an ONNX graph; only
``score`` differs. Metrics are higher-is-better (accuracy, Spearman).
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from compress import log


@dataclass
class BudgetResult:
    """Which layers stay float, what the search measured, and whether the budget holds."""

    reference: float
    metric: float
    float_layers: list[str]
    met: bool
    budget: float | None
    sensitivity: dict[str, float] = field(default_factory=dict)
    evaluations: int = 1

    @property
    def drop(self) -> float:
        return self.reference - self.metric

    def to_dict(self) -> dict:
        return {**asdict(self), "drop": self.drop}


def fit_budget(
    layers: list[str],
    score: Callable[[list[str]], float],
    reference: float,
    budget: float | None,
) -> BudgetResult:
    """Quantize ``layers`` within ``budget`` (max metric drop from ``reference``).

    ``score(quantized)`` returns the metric with exactly the layers ``quantized`` quantized.
    With no budget, every layer is quantized. When no fallback meets the budget, the best
    variant found is returned with ``met=False``.
    """
    full = score(layers)
    if budget is None or reference - full <= budget or not layers:
        return BudgetResult(reference, full, [], budget is None or reference - full <= budget, budget)
    log.info(f"  budget: drop {reference - full:.4f} > {budget}; measuring the sensitivity of {len(layers)} layers")
    sensitivity = {layer: reference - score([layer]) for layer in layers}
    ranked = sorted(layers, key=lambda layer: sensitivity[layer], reverse=True)
    best = BudgetResult(reference, full, [], False, budget, sensitivity, 1 + len(layers))
    for count in range(1, len(ranked)):  # all layers float would be no quantization at all
        kept_float = ranked[:count]
        metric = score([layer for layer in layers if layer not in kept_float])
        best.evaluations += 1
        if metric > best.metric:
            best.metric, best.float_layers = metric, kept_float
        if reference - metric <= budget:
            best.metric, best.float_layers, best.met = metric, kept_float, True
            break
    verdict = "met" if best.met else "NOT met (best variant kept)"
    log.info(f"  budget {verdict}: drop {best.drop:.4f} with {len(best.float_layers)} layer(s) kept float")
    return best
