"""Successive halving over the candidates: cheap rungs first, full distillation for the finalists.

Every candidate runs on the first rung (a short distillation, a few validation batches). Each
middle rung passes on the ``promote`` share of its candidates, ranked by their best point that
stays within the budget plus ``promote_slack`` (shorter distillation recovers less), cheapest
first; when too few stay within it, those closest to the budget fill the places. With two places
or more, the pruned candidate that lost least always has one.

The last rung (``promote`` share of places) takes its finalists one at a time
(``next_finalist``): first the pruned candidate that lost least (with one place: promote's
ranking), then each time the cheapest one that the most the finalists so far won back would
bring within the budget, so the slack is measured on the model and data rather than guessed; it
ends early when no candidate would fit. (A finalist quantized over the budget is quantized again
within it: ``Search.refit_quantization``.) The last rung's points, scored on the whole validation
split, are the finalists. Only the validation split decides.

Plain functions over trial records (see ``compress.search.trials``): a point is a dict with its
``validation_metric``, ``speedup`` (over fp32, timed beside it) and ``size_bytes``.
"""

import math

from compress.models.evaluate import metric_loss
from export.report.summary import pareto_front

# A point of each built-in metric, in its units: accuracy is a share, Spearman is already x100, a point
# of perplexity is one unit of it (a rise: perplexity is lower-is-better).
POINT_SIZE = {"accuracy": 0.01, "spearman": 1.0, "perplexity": 1.0}


def point_size(metric_name: str) -> float:
    """How much of the metric one point of ``max_drop`` is (a custom metric: one unit)."""
    return POINT_SIZE.get(metric_name, 1.0)


def point_label(trial_label: str, artifact: str, prunes_or_quantizes: bool) -> str:
    """How a point is named in progress lines and the report: its trial, then which artifact."""
    if not prunes_or_quantizes:
        return "fp32 baseline"
    return f"{trial_label} (fp32)" if artifact == "compressed" else f"{trial_label} + {artifact}"


def drop(point: dict, reference: float, size: float, higher_is_better: bool = True) -> float:
    """How many points ``point`` lies below the fp32 reference (negative: above it); for a lower-is-better
    metric (perplexity), how many points it rises above it."""
    return metric_loss(reference, point["validation_metric"], higher_is_better) / size


def cost(point: dict, objective: str) -> float:
    """What the objective minimizes: latency relative to fp32, or bytes on disk."""
    return 1.0 / point["speedup"] if objective == "latency" else float(point["size_bytes"])


def scored(points: list[dict], schemes: set[str]) -> list[dict]:
    """The points that count: passed, scored, and of a scheme the space offers."""
    return [p for p in points if p["status"] == "passed" and "speedup" in p and p["scheme"] in schemes]


def best_within(points: list[dict], allowed: float, objective: str) -> dict | None:
    """The cheapest point whose ``drop`` is within ``allowed`` points, or None."""
    fitting = [p for p in points if p["drop"] <= allowed + 1e-9]
    return min(fitting, key=lambda p: cost(p, objective)) if fitting else None


def least_drop(entry: tuple) -> float:
    """The least drop among an entry's ``(candidate, points)`` points (none: infinite)."""
    return min((p["drop"] for p in entry[1]), default=math.inf)


def promote(entries: list[tuple], allowed: float, share: float, objective: str) -> list:
    """The candidates of ``entries`` (``(candidate, points)``) passed on to the next rung."""
    keep = max(1, math.ceil(len(entries) * share))

    def rank(entry) -> tuple:
        _, points = entry
        best = best_within(points, allowed, objective)
        if best is not None:
            return (0, cost(best, objective))
        return (1, min((p["drop"] for p in points), default=math.inf))

    chosen = sorted((entry for entry in entries if entry[1]), key=rank)[:keep]  # a failed trial has no points
    # Among the candidates a longer distillation changes: one that only quantizes gains nothing from it.
    recovering = [entry for entry in entries if entry[1] and getattr(entry[0], "prunes", True)]
    safest = min(recovering, key=least_drop, default=None)
    if keep >= 2 and safest is not None and all(entry is not safest for entry in chosen):
        # A short distillation misjudges how much the cheaper candidates recover; the one that
        # lost least takes the last place, so the last rung likely holds a point within budget.
        chosen[-1] = safest
    return [candidate for candidate, _ in chosen]


def recovery(cheap: list[dict], final: list[dict]) -> float:
    """Points a candidate's whole distillation won back: its least drop on the cheap rung less that on the last."""
    return min(p["drop"] for p in cheap) - min(p["drop"] for p in final)


def next_finalist(entries: list[tuple], recovered: list[float], spec, places: int) -> tuple | None:
    """The next ``(candidate, cheap points)`` of ``entries`` for the last rung, None when none is worth it.

    First, with two places or more, the pruned candidate that lost least: a point likely within budget,
    and a measure of what the whole distillation wins back. Then the cheapest candidate whose cheap
    points, less the most any finalist won back, come within the budget (the recovery measured on
    this model and data replaces ``promote_slack``, the guess made before any finalist ran)."""
    scoreable = [entry for entry in entries if entry[1]]
    if not scoreable:
        return None
    if not recovered:
        pruned = [entry for entry in scoreable if getattr(entry[0], "prunes", True)]
        if places >= 2 and pruned:
            return min(pruned, key=least_drop)
        allowed = spec.max_drop + spec.promote_slack
        chosen = promote(scoreable, allowed, 0.0, spec.objective)[0]
        return next(entry for entry in scoreable if entry[0] is chosen)
    allowed = spec.max_drop + max(0.0, max(recovered))
    fitting = [(best_within(points, allowed, spec.objective), (c, points)) for c, points in scoreable]
    fitting = [(cost(best, spec.objective), entry) for best, entry in fitting if best is not None]
    return min(fitting, key=lambda pair: pair[0])[1] if fitting else None


def front(points: list[dict], objective: str, higher_is_better: bool = True) -> list[dict]:
    """The points no other point beats on both the objective and the validation metric."""
    indices = pareto_front([(cost(p, objective), p["validation_metric"]) for p in points], higher_is_better)
    return sorted((points[i] for i in indices), key=lambda p: cost(p, objective))
