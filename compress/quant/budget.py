"""The accuracy budget: quantize everything, and if the metric drops too far, fall back the
most sensitive layers to float until the drop fits.

Sensitivity is measured the way users reason about it: the metric drop when only that
layer is quantized. That costs one metric evaluation per layer, so a cheap signal ranks the
layers first (``rank``: each layer's output SQNR in dB on calibration data, quantized alone;
lower is more sensitive) and the metric is measured only for the ``candidates`` lowest.
Layers then fall back one at a time in the measured order (largest drop first), and after
the candidates in the cheap order. The same search serves bitsandbytes layers in torch and
weight nodes in an ONNX graph; only ``score`` and ``rank`` differ. ``higher_is_better`` says
the metric's direction: the drop is a fall of accuracy or Spearman, a rise of perplexity.
"""

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from compress.core import log
from compress.models.evaluate import metric_loss

# A layer the cheap signal could not measure ranks as the most sensitive: measure it rather than guess.
UNMEASURED = -math.inf


@dataclass
class BudgetResult:
    """Which layers stay float, what the search measured, and whether the budget holds.

    ``sqnr_db``: the cheap ranking, every layer's output SQNR (None where it could not be
    measured); ``sensitivity``: the measured metric drop of each candidate; ``candidates``:
    how many layers the metric was measured for (None: all, without a cheap ranking).
    """

    reference: float
    metric: float
    float_layers: list[str]
    met: bool
    budget: float | None
    sensitivity: dict[str, float] = field(default_factory=dict)
    evaluations: int = 1
    sqnr_db: dict[str, float | None] = field(default_factory=dict)
    candidates: int | None = None
    higher_is_better: bool = True

    @property
    def drop(self) -> float:
        return metric_loss(self.reference, self.metric, self.higher_is_better)

    def to_dict(self) -> dict:
        return {**asdict(self), "drop": self.drop}


def candidate_count(value: int | str) -> int | None:
    """A recipe's ``sensitivity_candidates`` as ``fit_budget`` takes it: ``all`` or 0 -> None (every layer)."""
    return None if value in ("all", 0) else int(value)


def cheap_order(sqnr_db: dict[str, float | None], layers: list[str]) -> list[str]:
    """``layers`` from the lowest SQNR (most sensitive) up; unmeasured first; ties keep graph order."""
    return sorted(layers, key=lambda layer: UNMEASURED if sqnr_db.get(layer) is None else sqnr_db[layer])


def fit_budget(
    layers: list[str],
    score: Callable[[list[str]], float],
    reference: float,
    budget: float | None,
    rank: Callable[[], dict[str, float | None] | None] | None = None,
    candidates: int | None = None,
    higher_is_better: bool = True,
) -> BudgetResult:
    """Quantize ``layers`` within ``budget`` (max metric drop from ``reference``).

    ``score(quantized)`` returns the metric with exactly the layers ``quantized`` quantized.
    ``rank()`` returns each layer's output SQNR in dB; with it and ``candidates``, the metric
    drop is measured only for that many layers of lowest SQNR. Without either, or when ``rank``
    returns None (nothing to rank on), for every layer.
    With no budget, every layer is quantized. When no fallback meets the budget, the best
    variant found is returned with ``met=False``.
    """

    def loss(metric: float) -> float:
        return metric_loss(reference, metric, higher_is_better)

    full = score(layers)
    if budget is None or loss(full) <= budget or not layers:
        met = budget is None or loss(full) <= budget
        return BudgetResult(reference, full, [], met, budget, higher_is_better=higher_is_better)
    sqnr_db = rank() if rank is not None and candidates is not None else None
    cheap = sqnr_db is not None  # None from rank: no calibration data to rank on; measure every layer
    sqnr_db = sqnr_db or {}
    if cheap:  # every layer the ranking could not measure, then the lowest SQNR up to ``candidates``
        unmeasured = [layer for layer in layers if sqnr_db.get(layer) is None]
        measured = unmeasured + [layer for layer in cheap_order(sqnr_db, layers) if layer not in unmeasured]
        measured = measured[: max(candidates, len(unmeasured))]
    else:
        measured = list(layers)
    log.info(
        f"  budget: drop {loss(full):.4f} > {budget}; measuring the sensitivity of {len(measured)} "
        f"of {len(layers)} layers" + (" (the lowest output SQNR)" if cheap else "")
    )
    sensitivity = {layer: loss(score([layer])) for layer in measured}
    ranked = sorted(measured, key=lambda layer: sensitivity[layer], reverse=True)
    ranked += [layer for layer in cheap_order(sqnr_db, layers) if layer not in sensitivity]
    best = BudgetResult(
        reference,
        full,
        [],
        False,
        budget,
        sensitivity,
        1 + len(measured),
        sqnr_db,
        len(measured) if cheap else None,
        higher_is_better,
    )
    for count in range(1, len(ranked)):  # all layers float would be no quantization at all
        kept_float = ranked[:count]
        metric = score([layer for layer in layers if layer not in kept_float])
        best.evaluations += 1
        if loss(metric) < loss(best.metric):
            best.metric, best.float_layers = metric, kept_float
        if loss(metric) <= budget:
            best.metric, best.float_layers, best.met = metric, kept_float, True
            break
    verdict = "met" if best.met else "NOT met (best variant kept)"
    log.info(f"  budget {verdict}: drop {best.drop:.4f} with {len(best.float_layers)} layer(s) kept float")
    return best
