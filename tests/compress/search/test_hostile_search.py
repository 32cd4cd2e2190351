"""A search folder from someone else (issue 29): its files links, FIFOs or junk in turn, then the
same search resumed into it. None writes outside, none blocks (a hang guard), none exits 3; a
trial point naming a file outside the folder is refused, never timed.

One small real search is made per module and copied per case; the CLI runs in-process.
"""

import contextlib
import json
import shutil

import pytest
import yaml

from compress.cli import main
from tests.compress.search.helpers import tiny_search_recipe
from tests.export.runfolder.test_hostile_folder import REFUSALS, VICTIM, bomb, hang_guard, plant, refused

RECIPE = tiny_search_recipe("hostile-search", [0.5])


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    with pytest.MonkeyPatch.context() as patch:  # the timing's warm-up turns are not under test here
        patch.setattr("export.measure.benchmark.warm", lambda call, seconds=0.0: call())
        assert main(["search", str(root / "recipe.yaml"), "--out", str(root / "search")]) == 0
    return root


@pytest.fixture
def case(searched, tmp_path):
    victim = tmp_path / "notes.txt"
    victim.write_text(VICTIM)
    return shutil.copytree(searched / "search", tmp_path / "search"), victim, searched / "recipe.yaml"


def resume(out, recipe, capfd) -> tuple[int, str]:
    with hang_guard():
        code = main(["search", str(recipe), "--out", str(out)])
    return code, capfd.readouterr().err


def a_point(out) -> str:
    return next(p.relative_to(out).as_posix() for p in sorted((out / "trials").rglob("*.onnx")))


@pytest.mark.parametrize("kind", ["link", "fifo"])
@pytest.mark.parametrize(
    "relative",
    [
        "search.json",
        "study.db",
        "study.db-journal",
        ".search-timing.lock",
        "run.log",
        ".modelpress.lock",
        "a trial's point",
    ],
)
def test_a_file_the_search_reads_is_refused_in_one_line(case, relative, kind, capfd):
    out, victim, recipe = case
    plant(out, a_point(out) if relative == "a trial's point" else relative, kind, victim)
    refused(*resume(out, recipe, capfd), *REFUSALS[kind], "not a file of this search")
    assert victim.read_text() == VICTIM


@pytest.mark.parametrize("relative", ["search.json", "study.db"])
def test_a_record_over_the_bound_is_refused_unread(case, relative, capfd):
    out, _, recipe = case
    bomb(out / relative)
    refused(*resume(out, recipe, capfd), "over the 67108864-byte bound")


def test_a_study_db_that_is_no_database_is_refused_in_one_line(case, capfd):
    out, _, recipe = case
    (out / "study.db").write_text("SQLite format 3\0 but no database: a lie\n" * 50)
    refused(*resume(out, recipe, capfd), "is not an Optuna study this search can use")


def rewrite_trials(out, change) -> None:
    """The study's records edited in place (SQL on study.db, as anyone holding the folder could)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(out / "study.db")) as db, db:
        rows = db.execute("SELECT trial_user_attribute_id, value_json FROM trial_user_attributes WHERE key='record'")
        rows = sorted(rows.fetchall())
        changed = change([json.loads(value) for _, value in rows])
        for (row, _), text in zip(rows, changed):
            db.execute("UPDATE trial_user_attributes SET value_json=? WHERE trial_user_attribute_id=?", (text, row))


def point_path(path):
    def change(records):
        records[-1]["points"][0]["path"] = path
        return [json.dumps(r) for r in records]

    return change


JUNK = {
    "key-a-list": (lambda records: [json.dumps({"key": [1]})], "not a trial record"),
    "record-a-string": (lambda records: [json.dumps("oops")], "not a trial record"),
    "points-a-string": (
        lambda records: [json.dumps({**records[0], "points": "oops"})],
        "passes or points are not lists",
    ),
    "point-name-escape": (
        lambda records: [json.dumps({**records[0], "points": [{**records[0]["points"][0], "name": "\x1b[31mX"}]})],
        "is not a plain name",
    ),
    "point-figure-a-string": (
        lambda records: [json.dumps({**records[0], "points": [{**records[0]["points"][0], "speedup": "fast"}]})],
        "figures that are not numbers",
    ),
    "point-path-absolute": (None, "leaves the folder"),
    "point-path-dotdot": (point_path("trials/../../outside.onnx"), "leaves the folder"),
    "point-path-elsewhere-inside": (point_path("recipe.yaml"), "is not a file of this search's trials/"),
}


@pytest.mark.parametrize("row", JUNK)
def test_a_junk_or_outside_trial_record_is_refused_in_one_line(case, row, capfd, tmp_path):
    out, _, recipe = case
    outside = tmp_path / "outside.onnx"
    shutil.copy(out / a_point(out), outside)
    change, fragment = JUNK[row]
    rewrite_trials(out, change or point_path(str(outside)))
    code, err = resume(out, recipe, capfd)
    refused(code, err, fragment)
    assert "\x1b" not in err
    assert "outside.onnx" not in (out / "search.json").read_text()  # never timed, never chosen


@pytest.mark.parametrize("which", ["trials", "work"])
def test_a_trial_or_run_folder_that_is_a_link_is_refused_and_survives(case, which, capfd, tmp_path):
    out, _, recipe = case
    inner = sorted((out / which).iterdir())[0]
    users = shutil.copytree(inner, tmp_path / "users-folder")
    before = sorted(p.relative_to(users) for p in users.rglob("*"))
    shutil.rmtree(inner)
    inner.symlink_to(users, target_is_directory=True)
    refused(*resume(out, recipe, capfd), "is a symbolic link")
    assert sorted(p.relative_to(users) for p in users.rglob("*")) == before


def test_a_resumed_points_onnx_bomb_fails_in_one_line_never_reaches_onnx_runtime(case, capfd, monkeypatch):
    import onnx

    from tests.export.runfolder.test_hostile_folder import constant_of_shape

    out, _, recipe = case
    for path in (out / "trials").rglob("*.onnx"):  # every point: the finalists are timed again on resume
        model = onnx.load(str(path))
        constant_of_shape(model)
        onnx.save(model, str(path))
    monkeypatch.setattr("export.measure.benchmark.warm", lambda call, seconds=0.0: call())
    code, err = resume(out, recipe, capfd)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("modelpress:")]
    assert len(lines) == 1 and "ConstantOfShape 'bomb' makes a tensor over" in lines[0], err
