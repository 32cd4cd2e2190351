"""fit_budget: the search over layers kept in float, on a known additive sensitivity."""

from compress.quant.budget import candidate_count, fit_budget

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


# The cheap signal: output SQNR in dB per layer (lower = more sensitive). It misjudges "a" (ranks it
# below "d"), as a cheap proxy can; the measured drops then decide the fallback order.
SQNR_DB = {"a": 30.0, "b": 10.0, "c": 20.0, "d": 25.0}


class Counted:
    """``additive_score`` that counts its calls, and a ranking that counts its own."""

    def __init__(self):
        self.scores = self.ranks = 0

    def score(self, quantized: list[str]) -> float:
        self.scores += 1
        return additive_score(quantized)

    def rank(self) -> dict[str, float]:
        self.ranks += 1
        return dict(SQNR_DB)


def test_metric_is_measured_only_for_the_lowest_sqnr_candidates():
    counted = Counted()
    result = fit_budget(list(COSTS), counted.score, 1.0, 0.12, counted.rank, candidates=2)
    assert counted.ranks == 1
    assert set(result.sensitivity) == {"b", "c"}  # the two lowest SQNR, measured
    assert result.sqnr_db == SQNR_DB and result.candidates == 2
    assert result.float_layers == ["b", "c"] and result.met and abs(result.drop - 0.06) < 1e-12
    # one full evaluation, k=2 candidates, two fallback trials
    assert counted.scores == result.evaluations == 1 + 2 + 2


def test_after_the_candidates_layers_fall_back_in_the_cheap_order():
    counted = Counted()
    result = fit_budget(list(COSTS), counted.score, 1.0, 0.0, counted.rank, candidates=1)
    assert set(result.sensitivity) == {"b"}
    # b (measured), then c, d, a by SQNR; the best variant keeps one layer quantized
    assert result.float_layers == ["b", "c", "d"] and not result.met
    assert counted.scores == result.evaluations == 1 + 1 + 3


def test_exhaustive_mode_never_ranks_and_measures_every_layer():
    counted = Counted()
    result = fit_budget(list(COSTS), counted.score, 1.0, 0.12, counted.rank, candidates=None)
    assert counted.ranks == 0 and result.sqnr_db == {} and result.candidates is None
    assert set(result.sensitivity) == set(COSTS) and result.float_layers == ["b", "c"]
    assert counted.scores == result.evaluations == 1 + len(COSTS) + 2


def test_a_layer_the_ranking_could_not_measure_is_a_candidate():
    counted = Counted()
    ranking = {**SQNR_DB, "d": None}
    result = fit_budget(list(COSTS), counted.score, 1.0, 0.12, lambda: ranking, candidates=1)
    assert set(result.sensitivity) == {"d"}


def test_candidate_count_reads_the_recipe_value():
    assert candidate_count("all") is None and candidate_count(0) is None and candidate_count(8) == 8


def test_a_ranking_with_nothing_to_rank_on_falls_back_to_measuring_every_layer():
    counted = Counted()
    result = fit_budget(list(COSTS), counted.score, 1.0, 0.12, lambda: None, candidates=1)
    assert set(result.sensitivity) == set(COSTS) and result.candidates is None and result.sqnr_db == {}
    assert result.float_layers == ["b", "c"] and counted.scores == 1 + len(COSTS) + 2


def test_layers_the_ranking_could_not_measure_are_all_measured_by_the_metric():
    """Unmeasured layers are candidates beyond ``candidates``; the record counts what was measured."""
    layers = [f"l{i}" for i in range(6)]
    ranks = {"l0": None, "l1": None, "l2": None, "l3": 10.0, "l4": 30.0, "l5": 20.0}
    calls = []

    def score(quantized):
        calls.append(list(quantized))
        return 1.0 - 0.1 * len(quantized)

    result = fit_budget(layers, score, 1.0, 0.25, rank=lambda: ranks, candidates=2)
    singles = [c[0] for c in calls if len(c) == 1]
    assert singles == ["l0", "l1", "l2"]  # every unmeasured layer, which already fill the 2 candidates
    assert result.candidates == 3 and set(result.sensitivity) == {"l0", "l1", "l2"}


def test_a_meter_that_saw_nothing_has_no_figure():
    from compress.quant.sqnr import SqnrMeter

    assert SqnrMeter().db() is None
