"""The rungs on a fake trial runner: failures that must not stop (or be recorded by) a search, empty
cuts, and the fp32 model as the best answer."""

from types import SimpleNamespace

import pytest

from compress.core.errors import OutputError
from compress.recipe.schema import load_recipe
from compress.recipe.search_spec import SearchSpec
from compress.search.rungs import NothingWithinBudget, Search
from compress.search.space import build_space
from compress.search.trials import trial_key, validation_subset
from tests.compress.search.test_search import model, task_data

PASSES = [{"pass": "structured_prune", "ratio": 0.5}, {"pass": "distill", "epochs": 1}]


def point(name: str, size: int, metric: float = 0.9, speedup: float = 1.0, path: str | None = None) -> dict:
    return {
        "name": name,
        "scheme": "none",
        "status": "passed",
        "path": path or f"{name}.onnx",
        "size_bytes": size,
        "speedup": speedup,
        "validation_metric": metric,
    }


def record(passes: list, points: list) -> dict:
    return {
        "key": trial_key(passes, None, load_recipe({}).seed),
        "passes": passes,
        "validation_batches": 2,
        "validation_complete": True,
        "points": points,
        "stages_computed": 1,
        "stages_reused": 0,
        "seconds": 1.0,
    }


def make_search(tmp_path, run, spec: SearchSpec | None = None) -> Search:
    recipe = load_recipe({})
    data = task_data()
    runner = SimpleNamespace(
        out=tmp_path,
        data=data,
        recipe=recipe,
        run=run,
        baseline_path=None,
        score_path=lambda *_: 0.9,
        validation=lambda batches: validation_subset(data, batches),
    )
    spec = spec or SearchSpec(max_drop=1.0)
    return Search(runner, build_space(model(), recipe, spec, 0.01), spec, "accuracy")


def test_a_crashed_trial_fails_alone_and_a_rerun_tries_it_again(tmp_path):
    calls = []

    # the rerun resumes the study, whose points must be the search's own files
    baseline = tmp_path / "trials" / "base" / "compressed.onnx"
    baseline.parent.mkdir(parents=True)
    baseline.write_bytes(b"onnx")

    def crash(passes, batches, scheme_of):
        calls.append(passes)
        if not passes:
            return record(passes, [point("compressed", 100, path="trials/base/compressed.onnx")])
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x3 and 4x5)\nmore")

    for _ in range(2):
        search = make_search(tmp_path, crash)
        search.trial([], None, "fp32 baseline", None)
        failed = search.trial(PASSES, None, "prune 0.5", 0)
        assert failed["points"][0]["status"] == "failed"
        assert failed["points"][0]["error"] == "RuntimeError: mat1 and mat2 shapes cannot be multiplied (8x3 and 4x5)"
        assert "crashed" not in failed
    assert calls == [[], PASSES, PASSES]  # the baseline was recorded; the crash was not


def test_a_full_disk_stops_the_search_and_records_nothing(tmp_path):
    def full(passes, batches, scheme_of):
        if not passes:
            return record(passes, [point("compressed", 100)])
        raise OutputError("work/x: disk full while writing; free space and rerun the same command")

    search = make_search(tmp_path, full)
    search.trial([], None, "fp32 baseline", None)
    with pytest.raises(OutputError, match="disk full"):
        search.trial(PASSES, None, "prune 0.5", 0)
    assert len(search.queue.study.records(include_crashed=True)) == 1  # the baseline; the failed trial has none


def test_a_cut_that_removes_nothing_is_left_out(tmp_path):
    sizes = iter([100, 100, 60])  # baseline; a ratio rounding to no channel; a real cut

    def run(passes, batches, scheme_of):
        return record(passes, [point("compressed", next(sizes)), {**point("int8", 30), "scheme": "int8_static"}])

    search = make_search(tmp_path, run)
    search.trial([], None, "fp32 baseline", None)
    empty = search.trial(PASSES, None, "prune 0.5", 0)
    assert {p["status"] for p in empty["points"]} == {"failed"}
    assert "removed nothing" in empty["points"][1]["error"]
    cut = search.trial([*PASSES, {"pass": "quantize"}], None, "prune 0.5", 0)
    assert {p["status"] for p in cut["points"]} == {"passed"}


@pytest.mark.parametrize(
    ("stopped", "message"),
    [(False, "no compressed point within --max-drop 1 is faster than the fp32 model"), (True, "raise --budget")],
)
def test_the_fp32_model_as_the_best_answer_is_a_result_not_a_recipe(tmp_path, stopped, message):
    search = make_search(tmp_path, None)
    search.runner.baseline_path = "baseline.onnx"
    # The baseline's own trial is the same file as the baseline row; the pruned point is slower.
    search.runner.time_points = lambda paths, timing: {
        name: {"p50_ms": 12.0 if name.startswith("slower") else 10.0} for name in paths
    }
    search.trials = [
        {**record([], [{**point("compressed", 100, path="baseline.onnx"), "drop": 0.0}]), "key": "b"},
        {**record(PASSES, [{**point("compressed", 60, 0.895, 0.8), "drop": 0.5}]), "key": "slower"},
    ]
    if stopped:
        search.stopped_by_budget = True
        search.trials[1]["validation_complete"] = False  # the time ran out on the first rung
    with pytest.raises(NothingWithinBudget, match=message):
        search.choose({})


def test_the_last_rung_runs_finalists_one_at_a_time_until_none_would_fit(tmp_path):
    """Cheap drops 2.0 / 2.5 / 5.0 points; the safest wins back 1.5 in full, so 2.5 fits and 5.0 never runs."""
    cheap = {0.25: 0.88, 0.5: 0.875, 0.75: 0.85}
    final = {0.25: 0.895, 0.5: 0.892, 0.75: 0.88}
    runs = []

    def run(passes, batches, scheme_of):
        ratio = passes[0].get("ratio", 0.0) if passes else 0.0
        runs.append((ratio, batches))
        metric = 0.9 if not passes else (cheap if batches else final)[ratio]
        return record(passes, [point("compressed", 100 - int(ratio * 80), metric, 1 + ratio, path=f"{ratio}.onnx")])

    # validation_batches 1 of 2: the cheap rung scores a subset, so the fake can tell the rungs apart
    spec = SearchSpec(
        max_drop=1.0, prune_ratios=[0.25, 0.5, 0.75], quantize=["none"], promote=1.0, validation_batches=1
    )
    search = make_search(tmp_path, run, spec)
    search.runner.baseline_path = None
    search.trial([], None, "fp32 baseline", None)
    search.run_rungs()
    # The cheap rung from the safest candidate on (issue 32): a budget spent early leaves the likeliest points.
    assert runs[1:] == [(0.25, 1), (0.5, 1), (0.75, 1), (0.25, None), (0.5, None)]
    assert sorted(round(p["drop"], 6) for p in search.finalists()) == [0.0, 0.5, 0.8]
