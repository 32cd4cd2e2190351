"""Workers (issue 30): two processes on the embedded study choose what one does; one SIGKILLed mid-trial
loses only its trial, which the other runs again, and the chosen recipe still reproduces its metric.

A tiny MLP, one rung of two pruning candidates (both queued at once), objective size (no timing decides).
The CLI runs in-process; its second worker is a spawned child process.
"""

import json
import os
import signal
import threading
import time
from types import SimpleNamespace

import optuna
import pytest
import yaml

from compress.cli import main
from tests.compress.search.helpers import held_accuracy, rerun_artifact, tiny_search_recipe
from tests.tiny_models import mlp, vector_data

RECIPE = tiny_search_recipe("workers", [0.25, 0.5], task={"metric": "tests.compress.search.helpers:held_accuracy"})


def trials_of(out) -> list:
    return optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'study.db'}").get_trials()


def take_turns(run_claimed):
    """``run_claimed`` for the search's own process that, before its second trial, waits until another
    worker has claimed one: on a busy machine the spawned worker may still sleep between its looks at the
    queue while this process runs every tiny trial, and which process runs what is what the test checks."""
    from compress.search.study import machine

    ran = []

    def in_turn(study, runner, claimed, own_baseline=None):
        for _ in range(600 if ran else 0):  # steps of 0.1 s; past them the assertion on workers fails
            if any(t.user_attrs.get("worker", machine()) != machine() for t in study.trials()):
                break
            time.sleep(0.1)
        ran.append(claimed)
        return run_claimed(study, runner, claimed, own_baseline)

    return in_turn


def search(root, name: str, workers: int) -> tuple[int, dict]:
    from compress.search import workers as module

    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    with pytest.MonkeyPatch.context() as patch:  # the final timing's warm-up turns are not under test here
        patch.setattr("export.measure.benchmark.warm", lambda call, seconds=0.0: call())
        if workers > 1:
            patch.setattr(module, "run_claimed", take_turns(module.run_claimed))
        code = main(["search", str(root / "recipe.yaml"), "--out", str(root / name), "--workers", str(workers)])
    return code, json.loads((root / name / "search.json").read_text())


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """The same search with one worker and with two."""
    root = tmp_path_factory.mktemp("workers")
    return root, {count: search(root, f"w{count}", count) for count in (1, 2)}


def test_two_workers_run_the_queued_trials_once_each_and_choose_what_one_worker_does(searched):
    root, runs = searched
    assert runs[1][0] == runs[2][0] == 0
    trials = trials_of(root / "w2")
    keys = [t.user_attrs["record"]["key"] for t in trials]
    assert len(keys) == len(set(keys)) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # the search's process and the spawned one each ran a trial
    assert runs[2][1]["chosen"]["label"] == runs[1][1]["chosen"]["label"]
    assert runs[2][1]["chosen"]["validation_metric"] == runs[1][1]["chosen"]["validation_metric"]
    report = (root / "w2" / "report.md").read_text()
    assert "- workers: 2 on this machine; trials run by 2 processes" in report


def test_a_worker_killed_mid_trial_loses_only_that_trial(tmp_path, monkeypatch):
    hold = tmp_path / "hold"
    hold.mkdir()
    monkeypatch.setenv("MODELPRESS_TEST_HOLD", str(hold))
    killed = []

    def kill_when_held():
        for _ in range(1200):  # steps of 0.1 s: the spawned worker scores within its first trial
            if (hold / "held").is_file() and (hold / "held").read_text():
                pid = int((hold / "held").read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_when_held)
    killer.start()
    code, state = search(tmp_path, "search", 2)
    killer.join()
    assert code == 0 and len(killed) == 1
    trials = trials_of(tmp_path / "search")
    dead = [t for t in trials if t.user_attrs.get("worker", "").endswith(f"/{killed[0]}")]
    assert [t.state.name for t in dead] == ["FAIL"] and "record" not in dead[0].user_attrs
    rerun = [t for t in trials if t.system_attrs.get("failed_trial") == dead[0].number]
    assert [t.state.name for t in rerun] == ["COMPLETE"]
    assert rerun[0].user_attrs["task"]["key"] == dead[0].user_attrs["task"]["key"]
    keys = [t.user_attrs["record"]["key"] for t in trials if "record" in t.user_attrs]
    assert len(keys) == len(set(keys)) == 3  # every trial recorded once
    # the chosen recipe reproduces the chosen point's metric
    chosen = state["chosen"]
    result = SimpleNamespace(recipe_path=tmp_path / "search" / "recipe.yaml", chosen=chosen)
    data = vector_data()
    predict = rerun_artifact(mlp(), result, data, held_accuracy, tmp_path / "again")
    assert held_accuracy(predict, data.batches(data.resolve("validation"))) == chosen["validation_metric"]


def test_timing_waits_for_the_work_under_way_and_new_work_waits_for_the_timing(tmp_path):
    from compress.search.workers import Guard

    trainer, timer, late = Guard(tmp_path), Guard(tmp_path), Guard(tmp_path)  # three workers' descriptors
    events = []

    def time_it():
        with timer.timing():
            events.append("timing")
            ended.wait()
            events.append("timed")  # inside: once the timing lets go, the late work may start at once

    def work_late():
        with late.working():
            events.append("late work")

    ended = threading.Event()
    with trainer.working():
        timing = threading.Thread(target=time_it)
        timing.start()
        timing.join(0.5)
        assert events == []  # the timing waits while a worker trains
        blocked = threading.Thread(target=work_late)
        blocked.start()
        blocked.join(0.5)
        assert events == []  # the gate is closed to new work while a timing waits
    timing.join(0.5)
    assert events == ["timing"]  # the training ended: the timing has the machine, new work still waits
    ended.set()
    timing.join()
    blocked.join()
    assert events == ["timing", "timed", "late work"]
