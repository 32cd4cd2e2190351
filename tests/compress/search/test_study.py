"""The study (issue 30): a search shared through PostgreSQL by two local workers and one ``--join`` worker
of another folder (as another machine would be) records every trial once.

The server is a throw-away cluster that ``.ci/run`` starts (``.ci/postgres``) and names in
MODELPRESS_TEST_POSTGRES; without it these tests skip. Each test gets a database of its own.
"""

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from compress.search.study import shown_url, study_name
from tests.compress.search.test_workers import RECIPE

SERVER = os.environ.get("MODELPRESS_TEST_POSTGRES")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def database():
    if not SERVER:
        pytest.skip("no PostgreSQL server: MODELPRESS_TEST_POSTGRES is unset (.ci/run starts one with .ci/postgres)")
    import sqlalchemy

    name = f"search_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    head, _, query = SERVER.partition("?")
    yield f"{head.rsplit('/', 1)[0]}/{name}?{query}"
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    engine.dispose()


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "compress.cli", "search", *args, "-q"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_workers_and_a_joining_one_share_a_postgres_study_each_trial_once(database, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    # four candidates on a cheap rung (each worker has one to take), then one finalist
    cheap = {"prune_ratios": [0.25, 0.5, 0.625, 0.75], "distill_fractions": [0.5, 1.0], "promote": 0.25}
    search = {**RECIPE["search"], **cheap}
    recipe.write_text(yaml.safe_dump({**RECIPE, "task": {"metric": "accuracy"}, "search": search}))
    coordinator = cli(str(recipe), "--out", str(tmp_path / "search"), "--workers", "2", "--storage", database)
    for _ in range(600):  # steps of 0.1 s until the search has made its study (a hang guard, not a timing)
        if optuna.get_all_study_names(storage=database) or coordinator.poll() is not None:
            break
        time.sleep(0.1)
    joined = cli(str(recipe), "--join", database, "--out", str(tmp_path / "elsewhere"))
    outputs = [process.communicate(timeout=600)[0] for process in (coordinator, joined)]
    assert coordinator.returncode == 0 and joined.returncode == 0, outputs
    [name] = optuna.get_all_study_names(storage=database)
    assert name.startswith(study_name({"run": {"name": "workers"}})[: len("modelpress-workers-")])
    trials = optuna.load_study(study_name=name, storage=database).get_trials()
    records = [t.user_attrs["record"] for t in trials if "record" in t.user_attrs]
    keys = [record["key"] for record in records]
    assert len(keys) == len(set(keys)) == 6  # baseline, four cheap trials, a finalist: none twice
    assert all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    by_process = {}
    for record in records:
        by_process.setdefault(record["worker"].rsplit("/", 1)[1], []).append(record)
    assert len(by_process) == 3, sorted(by_process)  # the search's process, its local worker, the joined one
    remote = [t for t in trials if t.user_attrs.get("worker", "").endswith(f"/{joined.pid}")]
    assert remote and all(t.params["rung"] == 0 and t.user_attrs["record"]["remote"] for t in remote), [
        (t.params, t.user_attrs.get("record")) for t in remote
    ]  # the cheap rung only, its files left in its own folder
    assert not (tmp_path / "elsewhere" / "study.db").exists() and (tmp_path / "search" / "recipe.yaml").is_file()
    assert "secret" not in shown_url("postgresql://user:secret@host/db")  # messages and reports hide a password


def test_a_trial_queued_by_an_interrupted_run_is_run_once_by_the_rerun(tmp_path):
    from compress.recipe.schema import load_recipe
    from compress.search.trials import trial_key
    from tests.compress.search.test_rungs import PASSES, make_search, point, record
    from tests.export.runfolder.test_hostile_folder import hang_guard

    calls = []
    for name in ("1", "2"):  # a resumed record's points must be files of the folder's trials/
        (tmp_path / "trials" / name).mkdir(parents=True)
        (tmp_path / "trials" / name / "compressed.onnx").write_bytes(b"onnx")

    def run(passes, batches, scheme_of):
        calls.append(passes)
        path = f"trials/{len(calls)}/compressed.onnx"
        return record(passes, [point("compressed", 100 - 40 * bool(passes), path=path)])

    passes = [*PASSES, {"pass": "quantize"}]
    key = trial_key(passes, None, load_recipe({}).seed)
    search = make_search(tmp_path, run)
    search.trial([], None, "fp32 baseline", None)
    study = search.queue.study
    task = {"key": key, "passes": passes, "validation_batches": None, "scheme_of": {}, "baseline": None}
    study.enqueue({**task, "objective": "size"}, 0)  # queued, then the search was killed before it ran
    rerun = make_search(tmp_path, run)
    assert rerun.trial([], None, "fp32 baseline", None)["resumed"]
    with hang_guard():  # a rerun that waited for a record newer than the queued trial would never end
        got = rerun.trial(passes, None, "prune 0.5, quantized", 0)
    assert got["key"] == key and not got["resumed"] and calls == [[], passes]
    queued = [t for t in study.trials() if t.user_attrs.get("task", {}).get("key") == key]
    assert [t.state.name for t in queued] == ["COMPLETE"]  # run once, from the queue it was left in
