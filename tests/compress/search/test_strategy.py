"""Successive halving's ranking and the Pareto front, on hand-made points."""

from compress.search import strategy


def point(metric, speedup, size=1000, scheme="none", reference=0.9):
    p = {"status": "passed", "scheme": scheme, "validation_metric": metric, "speedup": speedup, "size_bytes": size}
    return {**p, "drop": strategy.drop(p, reference, 0.01)}


def test_drop_is_in_points_of_the_metric():
    assert round(point(0.885, 1.0)["drop"], 6) == 1.5
    assert strategy.point_size("accuracy") == 0.01 and strategy.point_size("spearman") == 1.0
    assert strategy.point_size("my_metric") == 1.0


def test_promote_ranks_the_fastest_within_budget_first_then_the_closest_to_it():
    entries = [
        ("slow but exact", [point(0.9, 1.5)]),
        ("fast, within", [point(0.89, 4.0)]),
        ("fastest, far off", [point(0.70, 9.0)]),
        ("fast, just over", [point(0.86, 6.0), point(0.855, 7.0, scheme="int8_static")]),
    ]
    assert strategy.promote(entries, allowed=2.0, share=0.5, objective="latency") == ["fast, within", "slow but exact"]
    # Fewer within the budget than places: the closest to it fill them.
    assert strategy.promote(entries, allowed=2.0, share=0.75, objective="latency")[2] == "fast, just over"
    assert strategy.promote(entries, allowed=4.5, share=0.25, objective="latency") == ["fast, just over"]
    assert len(strategy.promote(entries[:1], allowed=0.0, share=0.1, objective="latency")) == 1


def test_the_candidate_that_lost_least_always_has_a_place_when_there_are_two():
    entries = [
        ("exact", [point(0.9, 1.2)]),
        ("fast", [point(0.87, 5.0)]),
        ("faster", [point(0.86, 6.0)]),
        ("fastest", [point(0.865, 7.0)]),
    ]
    # Within a wide slack the cheapest rank first; the last of three places goes to the exact one.
    assert strategy.promote(entries, allowed=5.0, share=0.75, objective="latency") == ["fastest", "faster", "exact"]
    assert strategy.promote(entries, allowed=5.0, share=0.5, objective="latency") == ["fastest", "exact"]
    assert strategy.promote(entries, allowed=5.0, share=0.25, objective="latency") == ["fastest"]


def test_the_front_keeps_points_nothing_beats_on_both_axes():
    points = [point(0.9, 1.0), point(0.89, 3.0), point(0.88, 2.0), point(0.85, 5.0)]
    assert [p["speedup"] for p in strategy.front(points, "latency")] == [5.0, 3.0, 1.0]
    sized = [point(0.9, 1.0, size=100), point(0.8, 9.0, size=50), point(0.85, 1.0, size=200)]
    assert [p["size_bytes"] for p in strategy.front(sized, "size")] == [50, 100]


def test_only_passed_timed_points_of_offered_schemes_count():
    failed = {"status": "failed", "scheme": "none"}
    assert strategy.scored([failed, point(0.9, 1.0), point(0.9, 2.0, scheme="int4")], {"none"}) == [point(0.9, 1.0)]


def test_a_candidate_that_only_quantizes_gets_no_reserved_place():
    from compress.search.space import Candidate

    entries = [
        (Candidate(), [point(0.9, 1.5)]),  # no pruning: a longer distillation would not change it
        (Candidate(0.75), [point(0.87, 6.0)]),
        (Candidate(0.5), [point(0.88, 4.0)]),
        (Candidate(0.25), [point(0.89, 2.0)]),
    ]
    promoted = strategy.promote(entries, allowed=5.0, share=0.5, objective="latency")
    assert promoted == [Candidate(0.75), Candidate(0.25)]


def test_a_trial_label_gives_both_limits_of_a_step_bounded_distillation():
    from compress.search.rungs import trial_label
    from compress.search.space import Candidate

    passes = [{"pass": "layer_drop", "ratio": 0.5}, {"pass": "distill", "epochs": 1, "max_steps": 110}]
    assert trial_label(Candidate(depth_ratio=0.5), passes) == "depth 0.5, distill 1 epochs or 110 steps"
    assert trial_label(Candidate(0.5), [{"pass": "distill", "epochs": 3}]) == "prune 0.5, distill 3 epochs"


def test_the_last_rung_takes_the_safest_first_then_what_the_measured_recovery_brings_within_budget():
    from compress.recipe.search_spec import SearchSpec

    spec = SearchSpec(max_drop=1.0, promote_slack=3.0)
    entries = [
        ("safest", [point(0.878, 2.0), point(0.876, 4.5, scheme="int8_dynamic")]),  # 2.2, 2.4 points lost
        ("fast", [point(0.8773, 2.3), point(0.8758, 5.5, scheme="int8_dynamic")]),  # 2.27, 2.42
        ("fastest", [point(0.866, 8.0)]),  # 3.4
        ("failed", []),
    ]
    assert strategy.next_finalist(entries, [], spec, places=4)[0] == "safest"
    # The safest won back 1.48 points: "fast"'s int8 point (2.42 lost) would come within 1.0, "fastest" not.
    assert strategy.next_finalist(entries[1:], [1.48], spec, places=4)[0] == "fast"
    assert strategy.next_finalist(entries[1:], [0.2, 1.48], spec, places=4)[0] == "fast"  # the most won back
    assert strategy.next_finalist(entries[1:], [0.2], spec, places=4) is None  # nothing would fit: stop
    # One place: the guess (promote_slack) ranks, as on a middle rung.
    assert strategy.next_finalist(entries, [], spec, places=1)[0] == "fastest"
    assert round(strategy.recovery(entries[0][1], [point(0.8928, 2.0)]), 6) == 1.48
