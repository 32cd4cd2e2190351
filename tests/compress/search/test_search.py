"""A whole search on a tiny CNN: interrupted mid-trial, resumed, stages reused, the recipe reproduces.

One search (two rungs of one pruning candidate, int8 static, objective size so that no timing
decides) is interrupted while its last trial distills, then run again into the same folder; the
tests read what the two runs did. A continuous metric (negative cross-entropy) makes any change of
weights show in the figures the reproduction must match exactly.
"""

import json

import pytest
import torch
import torch.nn.functional as F

import compress
from compress.cli import build_parser
from compress.core.errors import OutputError
from compress.models.data import TaskData
from compress.search import trials as trials_module  # compress.search itself is the function
from compress.search.trials import TrialRunner, validation_subset
from tests.compress.search.helpers import counting, rerun_artifact
from tests.tiny_models import residual_cnn

RECIPE = {
    "name": "tiny-search",
    "passes": [
        {"pass": "structured_prune", "round_to": 1},
        {"pass": "distill", "epochs": 2, "lr": 0.01, "alpha": 1.0},
        {
            "pass": "quantize",
            "onnx": [
                {"scheme": "int8_static", "name": "int8", "exporter": "torchscript", "calibration": {"samples": 8}}
            ],
        },
    ],
    "export": {"exporter": "torchscript", "parity": {"atol": 1e-3, "quantized_min_cosine": 0.5}},
    "report": {"warmup": 1, "iterations": 4, "max_seconds": 0.2},
    "search": {
        "objective": "size",
        "batch_size": 4,
        "max_drop": 100.0,
        "prune_ratios": [0.5],
        "distill_fractions": [0.5, 1.0],
        "validation_batches": 1,
    },
}


def neg_cross_entropy(predict, batches) -> float:
    """Higher is better, and it moves with every weight (accuracy on tiny data would not)."""
    total = count = 0
    for inputs, labels in batches:
        total += float(F.cross_entropy(predict(inputs).float(), labels, reduction="sum"))
        count += len(labels)
    return -total / count


def batches(count: int, seed: int) -> list:
    generator = torch.Generator().manual_seed(seed)
    made = []
    for _ in range(count):
        images = torch.randn(8, 1, 8, 8, generator=generator)
        labels = (images[:, :, :4].mean(dim=(1, 2, 3)) > 0).long() + 2 * (images[:, :, :, :4].mean(dim=(1, 2, 3)) > 0)
        made.append((images, labels.long()))
    return made


def task_data() -> TaskData:
    return TaskData(eval=batches(2, 1), train=batches(2, 2), validation=batches(2, 3), calibration=batches(1, 4))


def model():
    return residual_cnn(channels=64)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The search interrupted in its third trial's distillation, then resumed; what each run did."""
    out = tmp_path_factory.mktemp("search")
    counts = {"first": {"prune": [], "distill": [], "trials": []}, "second": {"prune": [], "distill": [], "trials": []}}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("export.measure.benchmark.ROUNDS", 2)
        patch.setattr(trials_module, "TRIAL_TIMING", {"warmup": 1, "iterations": 4, "max_seconds": 0.2})
        real_run = TrialRunner.run
        for attempt, interrupt in (("first", 2), ("second", None)):
            counting(patch, "structured_prune", counts[attempt]["prune"])
            counting(patch, "distill", counts[attempt]["distill"], interrupt)

            def run_counted(self, passes, *args, calls=counts[attempt]["trials"]):
                calls.append(passes)
                return real_run(self, passes, *args)

            patch.setattr(TrialRunner, "run", run_counted)
            try:
                result = compress.search(model(), RECIPE, task_data(), out_dir=out, evaluator=neg_cross_entropy)
            except KeyboardInterrupt:
                assert attempt == "first"
    return out, result, counts


def test_an_interrupted_search_resumes_without_rerunning_finished_trials(searched):
    out, result, counts = searched
    first, second = counts["first"], counts["second"]
    assert len(first["trials"]) == 3  # baseline, prune 0.5 on rung 1, prune 0.5 on rung 2 (interrupted)
    assert second["trials"] == first["trials"][2:]  # only the interrupted trial runs again
    assert [t["resumed"] for t in result.trials] == [True, True, False]
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'study.db'}")  # the record: one study
    recorded = [t.user_attrs["record"]["key"] for t in study.trials if "record" in t.user_attrs]
    assert len(recorded) == len(set(recorded)) == 3
    interrupted = [t for t in study.trials if "record" not in t.user_attrs]
    assert [t.state.name for t in interrupted] == ["FAIL"]  # told failed by the interrupted run, then run again


def test_trials_reuse_the_stages_they_share(searched):
    out, result, counts = searched
    # structured_prune ran once for both rungs and both runs: the later trial loaded its stage.
    assert counts["first"]["prune"] == ["structured_prune"] and counts["second"]["prune"] == []
    assert len(counts["second"]["distill"]) == 1
    rung_two = result.trials[-1]
    assert (rung_two["stages_reused"], rung_two["stages_computed"]) == (2, 2)  # baseline, prune | distill, quantize
    assert result.trials[-1]["passes"][0] == result.trials[1]["passes"][0]


def test_the_chosen_point_is_the_smallest_scored_on_all_of_validation(searched):
    _, result, _ = searched
    chosen = result.chosen
    assert chosen["name"] == "int8" and chosen["trial"] == result.trials[-1]["key"]
    assert result.trials[-1]["validation_complete"] and not result.trials[1]["validation_complete"]
    assert chosen["size_bytes"] < min(p["size_bytes"] for p in result.trials[0]["points"])
    assert chosen["final"]["batch_size"] == 4 and chosen["final"]["speedup"] > 0


def test_the_written_recipe_reproduces_the_chosen_point(searched, tmp_path):
    out, result, _ = searched
    written = compress.load_recipe(result.recipe_path)
    assert [p.pass_name for p in written.passes] == ["structured_prune", "distill", "quantize"]
    assert [v.name for v in written.passes[2].onnx_variants()] == ["int8"] and written.search is None
    data = task_data()
    predict = rerun_artifact(model(), result, data, neg_cross_entropy, tmp_path / "again")
    assert neg_cross_entropy(predict, data.validation) == result.chosen["validation_metric"]
    assert neg_cross_entropy(predict, data.eval) == result.chosen["eval_metric"]


def test_the_folder_holds_the_report_fronts_plots_and_machine(searched):
    out, result, _ = searched
    text = result.report_path.read_text()
    fronts = ("## Pareto front: metric vs latency", "## Pareto front: metric vs size")
    for section in ("## Chosen point", "## Final timing", *fronts):
        assert section in text
    assert text.count("\n| ") >= 3 + 2 + 2 + 3  # chosen + baseline, two fronts, three trials (with headers)
    assert (out / "plots" / "metric_vs_latency.png").is_file() and (out / "plots" / "metric_vs_size.png").is_file()
    assert json.loads((out / "environment.json").read_text())["usable_cores"] >= 1
    state = json.loads((out / "search.json").read_text())
    assert state["status"] == "finished"
    timed = [(p["label"], p["final"]["speedup"]) for p in state["finalists"]]
    assert (result.chosen["label"], result.chosen["final"]["speedup"]) in timed  # the chosen row among them


def test_a_folder_of_another_search_is_refused(searched):
    out, _, _ = searched
    with pytest.raises(OutputError, match="holds a search of other inputs"):
        compress.search(residual_cnn(channels=16), RECIPE, task_data(), out_dir=out, evaluator=neg_cross_entropy)


def test_the_command_line_maps_flags_onto_the_search_section():
    args = build_parser().parse_args(
        ["search", "r.yaml", "--max-drop", "0.5", "--prune-ratios", "0.5,0.75", "--quantize", "none,int8_static"]
    )
    assert (args.max_drop, args.prune_ratios, args.quantize, args.objective) == (
        0.5,
        [0.5, 0.75],
        ["none", "int8_static"],
        None,
    )


def test_a_trial_the_passes_refuse_is_recorded_as_failed_and_not_run_again(tmp_path):
    from types import SimpleNamespace

    from compress.core.errors import SelectionError
    from compress.recipe.schema import load_recipe
    from compress.recipe.search_spec import SearchSpec
    from compress.search.rungs import Search
    from compress.search.space import build_space

    calls = []

    def refuse(passes, batches, scheme_of):
        calls.append(passes)
        raise SelectionError("structured_prune: layer 'x' matches nothing")

    recipe = load_recipe({})
    runner = SimpleNamespace(out=tmp_path, data=task_data(), recipe=recipe, run=refuse, baseline_path=None)
    space = build_space(model(), recipe, SearchSpec(), 1.0)
    passes = space.passes(space.candidates[1], 0)
    for _ in range(2):  # the second search reads the failure back from the study
        record = Search(runner, space, SearchSpec(), "neg_cross_entropy").trial(passes, 1, "prune 0.25", 0)
        assert record["points"][0]["status"] == "failed" and "matches nothing" in record["points"][0]["error"]
    assert len(calls) == 1


def test_finalists_within_timing_noise_are_told_apart_by_metric_then_distillation_length(tmp_path):
    from types import SimpleNamespace

    from compress.recipe.schema import load_recipe
    from compress.recipe.search_spec import SearchSpec
    from compress.search.rungs import Search
    from compress.search.space import build_space

    p50 = {"baseline": 10.0, "short/compressed": 1.00, "long/compressed": 1.03, "slow/compressed": 2.0}

    def time_points(paths, timing):
        return {name: {"p50_ms": p50[name]} for name in paths}

    recipe = load_recipe({})
    runner = SimpleNamespace(out=tmp_path, data=task_data(), recipe=recipe, time_points=time_points, baseline_path="b")
    search = Search(runner, build_space(model(), recipe, SearchSpec(), 1.0), SearchSpec(max_drop=1.0), "accuracy")
    point = {"name": "compressed", "scheme": "none", "status": "passed", "speedup": 5.0, "size_bytes": 1, "drop": 0.0}
    for key, rung, metric in (("short", 0, 0.99), ("long", 1, 0.99), ("slow", 1, 0.999)):
        trial = {"key": key, "rung": rung, "validation_complete": True, "label": key, "resumed": True}
        search.trials.append({**trial, "points": [{**point, "path": f"{key}.onnx", "validation_metric": metric}]})
    chosen, _ = search.choose({})
    assert chosen["trial"] == "long"  # 3% slower than "short": noise; same metric, longer distillation


def test_no_point_within_the_budget_is_a_clear_result_not_a_crash(tmp_path, monkeypatch):
    """When no scored point qualifies (here: every point is refused), the search names the closest one."""
    from compress.search import driver

    monkeypatch.setattr("export.measure.benchmark.ROUNDS", 2)
    monkeypatch.setattr(trials_module, "TRIAL_TIMING", {"warmup": 1, "iterations": 4, "max_seconds": 0.2})
    monkeypatch.setattr(driver.Search, "finalists", lambda self: [])
    search = {**RECIPE["search"], "max_drop": 0.0, "distill_fractions": [1.0]}
    with pytest.raises(driver.NothingWithinBudget, match=r"no point is within --max-drop 0: the closest, .* loses"):
        compress.search(
            model(), {**RECIPE, "search": search}, task_data(), out_dir=tmp_path, evaluator=neg_cross_entropy
        )
    assert driver.NothingWithinBudget.exit_code == 1


def test_a_finalist_quantized_over_the_budget_is_quantized_again_within_the_room_its_fp32_point_leaves(tmp_path):
    from types import SimpleNamespace

    from compress.recipe.schema import load_recipe
    from compress.recipe.search_spec import SearchSpec
    from compress.search.rungs import Search
    from compress.search.space import build_space

    runs = []

    def run(passes, batches, scheme_of):
        runs.append(passes)
        int8 = 0.893 if passes[-1]["max_metric_drop"] else 0.885  # the float fallback wins back 0.8 points
        return {
            "key": str(len(runs)),
            "passes": passes,
            "validation_batches": 2,
            "validation_complete": True,
            "stages_computed": 1,
            "stages_reused": 3,
            "seconds": 1.0,
            "points": [
                {"name": n, "scheme": s, "status": "passed", "path": f"{n}.onnx", "speedup": x, "size_bytes": 1}
                | {"validation_metric": m}
                for n, s, x, m in (("compressed", "none", 2.0, 0.896), ("int8", "int8_static", 4.0, int8))
            ],
        }

    recipe = load_recipe({})
    runner = SimpleNamespace(out=tmp_path, data=task_data(), recipe=recipe, run=run, score_path=lambda *_: 0.9)
    runner.baseline_path, runner.validation = "baseline.onnx", lambda batches: validation_subset(runner.data, batches)
    spec = SearchSpec(max_drop=1.0)
    search = Search(runner, build_space(model(), recipe, spec, 0.01), spec, "accuracy")
    passes = [{"pass": "structured_prune", "ratio": 0.5}, {"pass": "quantize", "max_metric_drop": None}]
    finalist = search.trial(passes, None, "prune 0.5", 1)
    assert [round(p["drop"], 6) for p in finalist["points"]] == [0.4, 1.5]  # fp32 within, int8 over

    refit = search.refit_quantization(finalist)
    assert runs[-1] == [passes[0], {**passes[1], "max_metric_drop": 0.006}]  # 1.0 - 0.4 points, in accuracy
    assert refit["label"] == "prune 0.5, quantized within 0.60 pt" and refit["refit"]
    # the study keys a trial by its passes (the fake's own key is not the record's)
    assert [(p["name"], p["trial"]) for p in search.finalists()] == [
        ("compressed", refit["key"]),
        ("int8", refit["key"]),
    ]
    # Nothing to refit: no quantized point over the budget, or no room under the fp32 point.
    assert search.refit_quantization(refit) is refit and len(runs) == 2
    over = {**finalist, "points": [{**p, "drop": p["drop"] + 0.7} for p in finalist["points"]]}
    assert search.refit_quantization(over) is over and len(runs) == 2
