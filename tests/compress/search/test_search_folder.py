"""Which folder may receive a search: another search's folder, --force, and files that are not ours."""

import json

import pytest

from compress.core.errors import OutputError
from compress.search.search_folder import STATE, claim, measured_on
from compress.search.study import Study, default_url
from export.measure.environment import package_version

KEY = "0123456789abcdef"


POINT = {"name": "int8", "status": "passed", "path": f"trials/{KEY}/int8.onnx"}
TRIAL = {"key": KEY, "passes": [], "validation_batches": 1, "validation_complete": True, "points": [POINT]}
IDENTITY = {"run": {"name": "old"}, "old": 1}


def old_search(out, extra: dict[str, str]) -> None:
    files = {
        STATE: json.dumps({"identity": IDENTITY}),
        f"trials/{KEY}/int8.onnx": "x",
        "plots/metric_vs_size.png": "x",
        "work/run/run.json": json.dumps({"identity": {}, "files": ["run.json", "stages/00-baseline/stage.json"]}),
        "work/run/stages/00-baseline/stage.json": "{}",
    }
    for name, text in {**files, **extra}.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    study = Study(default_url(out), IDENTITY, create=True, directions=["minimize", "maximize"])
    study.add_record(TRIAL, None)  # the study lists the search's points, as trials.jsonl did


def test_force_replaces_a_searchs_own_files(tmp_path):
    old_search(tmp_path, {"notes.md": "mine"})
    claim(tmp_path, {"new": 1}, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]


def test_force_refuses_when_the_searchs_folders_hold_other_files(tmp_path):
    old_search(tmp_path, {f"trials/{KEY}/notes.txt": "mine", "work/run/data.csv": "mine"})
    with pytest.raises(OutputError, match=rf"not: trials/{KEY}/notes.txt, work/run/data.csv; move them"):
        claim(tmp_path, {"new": 1}, force=True)
    assert (tmp_path / STATE).is_file() and (tmp_path / "work/run/data.csv").read_text() == "mine"


@pytest.mark.parametrize(
    "mine", [f"trials/{KEY}/other.onnx", "trials/fedcba9876543210/int8.onnx", "work/run/stages/01-x/model.safetensors"]
)
def test_force_removes_only_what_the_searchs_records_list(tmp_path, mine):
    # Each path fits the layout a search writes; none is listed by the study or a run.json: the user's.
    old_search(tmp_path, {mine: "mine"})
    with pytest.raises(OutputError, match=f"these are not: {mine}; move them"):
        claim(tmp_path, {"new": 1}, force=True)
    assert (tmp_path / mine).read_text() == "mine"


def test_a_search_json_that_is_no_record_is_refused(tmp_path):
    (tmp_path / STATE).write_text("[1, 2]")
    with pytest.raises(OutputError, match="is not a search's record"):
        claim(tmp_path, {"new": 1}, force=True)


def test_a_search_timed_with_other_threads_is_another_search():
    assert measured_on(3)["threads"] == 3 and measured_on(3) != measured_on(1)
    assert measured_on(None)["cpu"] and measured_on(None)["modelpress"] == package_version("modelpress")
