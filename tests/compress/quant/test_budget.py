"""fit_budget: the search over layers kept in float, on a known additive sensitivity."""

from compress.quant.budget import fit_budget

# Each layer, when quantized, costs this much metric; costs add up.
COSTS = {"a": 0.05, "b": 0.5, "c": 0.1, "d": 0.01}


def additive_score(quantized: list[str]) -> float:
    return 1.0 - sum(COSTS[name] for name in quantized)


def test_no_budget_quantizes_everything_with_one_evaluation():
    result = fit_budget(list(COSTS), additive_score, 1.0, None)
    assert result.float_layers == [] and result.met and result.evaluations == 1
    assert abs(result.drop - sum(COSTS.values())) < 1e-12


def test_most_sensitive_layers_fall_back_first_until_the_budget_holds():
    result = fit_budget(list(COSTS), additive_score, 1.0, 0.12)
    assert result.float_layers == ["b", "c"] and result.met
    assert abs(result.drop - 0.06) < 1e-12
    assert all(abs(result.sensitivity[name] - cost) < 1e-12 for name, cost in COSTS.items())
    assert result.evaluations == 1 + len(COSTS) + 2


def test_a_budget_that_holds_at_once_needs_no_sensitivity_pass():
    result = fit_budget(list(COSTS), additive_score, 1.0, 1.0)
    assert result.float_layers == [] and result.met and result.sensitivity == {}


def test_unreachable_budget_keeps_the_best_variant_with_one_layer_quantized():
    result = fit_budget(list(COSTS), additive_score, 1.0, 0.0)
    assert not result.met
    assert result.float_layers == ["b", "c", "a"] and abs(result.drop - 0.01) < 1e-12
