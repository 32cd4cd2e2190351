"""The search's time budget is the user's (issue 32, item 4): it says at the start what it keeps for the final
timing, tries the safest candidates first, and when the budget ends it before a point is chosen it exits 1
naming --budget-minutes, with its report written."""

import yaml

from compress.cli import main
from compress.search import trials as trials_module  # compress.search itself is the function
from compress.search.rungs import Search
from tests.compress.search.test_search import RECIPE

MODULE = "tests.compress.search.test_search"


def test_a_budget_that_admits_only_the_first_rung_exits_1_with_a_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("export.measure.benchmark.ROUNDS", 2)
    monkeypatch.setattr(trials_module, "TRIAL_TIMING", {"warmup": 1, "iterations": 4, "max_seconds": 0.2})
    # A clock that no test machine's speed moves: the baseline and one first-rung trial fit, then the budget is
    # spent (the second rung would start at 590 s of 600, and the final timing keeps 40 s of them).
    monkeypatch.setattr(Search, "elapsed", lambda self: 0.0 if len(self.trials) < 2 else 590.0)
    recipe = {
        **RECIPE,
        "model": {"factory": "tests.tiny_models:residual_cnn"},  # 8 channels: a quick distillation
        "data": {"factory": f"{MODULE}:task_data"},
        "task": {"metric": f"{MODULE}:neg_cross_entropy"},
        "search": {**RECIPE["search"], "prune_ratios": [0.25, 0.5], "budget_minutes": 10},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "search"
    assert main(["search", str(tmp_path / "recipe.yaml"), "--out", str(out)]) == 1
    err = " ".join(capsys.readouterr().err.split())
    logged = " ".join((out / "run.log").read_text().split())
    assert "budget 10 min (--budget-minutes); the final timing takes 40 s a row" in logged  # said before any trial
    assert "the time budget (--budget-minutes 10) is spent" in logged
    assert "ran out before any candidate reached the last rung; raise --budget-minutes" in err
    assert f"report: {out / 'report.md'}" in err and "Traceback" not in err
    report = (out / "report.md").read_text()
    assert "## No point chosen" in report and "raise --budget-minutes" in report
    assert "(stopped by the time budget)" in report
    trials = [line for line in report.splitlines() if line.startswith("| 2 |")]
    assert len(trials) == 1 and "prune 0.25" in trials[0]  # the safest candidate ran first
    assert not (out / "recipe.yaml").exists()
