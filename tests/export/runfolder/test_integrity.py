"""A run folder is checked against manifest.json before re-measurement: missing, changed, escaping names."""

import shutil

import pytest
import torch

from compress.core.errors import InputError
from compress.core.io import read_json, write_json_atomic
from export.onnx.exporter import to_onnx
from export.runfolder.artifacts import file_facts, graph_facts
from export.runfolder.integrity import verify_run_folder
from tests.tiny_models import mlp


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two different ONNX files (the run's artifact and a stranger's), exported once."""
    root = tmp_path_factory.mktemp("onnx")
    first = to_onnx(mlp(), torch.randn(2, 12), root / "a.onnx").path
    second = to_onnx(mlp(hidden=16), torch.randn(2, 12), root / "b.onnx").path
    return first, second


def run_folder(tmp_path, onnx_file, **overrides):
    """A run folder with one measured artifact record and its manifest entry."""
    out = tmp_path / "run"
    (out / "artifacts").mkdir(parents=True)
    shutil.copy(onnx_file, out / "artifacts" / "compressed.onnx")
    path = out / "artifacts" / "compressed.onnx"
    record = {
        "name": "compressed",
        "path": "artifacts/compressed.onnx",
        "format": "onnx",
        "precision": "fp32",
        "status": "passed",
        "parity": {"passed": True, "max_abs_diff": 1e-7, "min_cosine": 1.0},
        "metric": {"name": "accuracy", "value": 0.9},
        "latency": [{"provider": "CPUExecutionProvider", "batch_size": 1, "p50_ms": 0.1}],
        **graph_facts(path),
        **file_facts(path),
        **overrides,
    }
    write_json_atomic(out / "artifacts" / "compressed.json", record)
    write_json_atomic(out / "manifest.json", {"artifacts": {"artifacts/compressed.onnx": record["sha256"]}})
    return out


def test_unchanged_artifact_keeps_its_record(tmp_path, exported):
    out = run_folder(tmp_path, exported[0])
    (record,) = verify_run_folder(out)
    assert record["status"] == "passed" and record["metric"]["value"] == 0.9


def test_deleted_artifact_is_reported_missing_without_old_figures(tmp_path, exported):
    out = run_folder(tmp_path, exported[0])
    (out / "artifacts" / "compressed.onnx").unlink()
    (record,) = verify_run_folder(out)
    assert record["status"] == "missing"
    assert record["error"] == "artifact file missing: artifacts/compressed.onnx"
    stored = read_json(out / "artifacts" / "compressed.json")
    assert stored == record
    assert not {"parity", "metric", "latency", "size_bytes", "sha256", "opset"} & set(stored)


def test_replaced_artifact_is_reported_changed_with_facts_of_the_new_file(tmp_path, exported):
    out = run_folder(tmp_path, exported[0])
    shutil.copy(exported[1], out / "artifacts" / "compressed.onnx")
    (record,) = verify_run_folder(out)
    new = out / "artifacts" / "compressed.onnx"
    assert record["status"] == "changed" and "differs from manifest.json" in record["error"]
    assert not {"parity", "metric", "latency"} & set(record)
    assert (
        record["sha256"] == file_facts(new)["sha256"] != read_json(out / "manifest.json")["artifacts"][record["path"]]
    )
    assert record["size_bytes"] == new.stat().st_size
    assert record["op_counts"] == graph_facts(new)["op_counts"]


@pytest.mark.parametrize(
    "overrides",
    [{"name": "../evil"}, {"path": "../evil.onnx"}, {"path": "/etc/passwd"}, {"path": "artifacts/../../x.onnx"}],
)
def test_names_and_paths_leaving_the_folder_are_refused_and_nothing_is_written(tmp_path, exported, overrides):
    out = run_folder(tmp_path, exported[0], **overrides)
    (out / "artifacts" / "compressed.onnx").unlink()  # would otherwise be rewritten as missing
    before = read_json(out / "artifacts" / "compressed.json")
    with pytest.raises(InputError, match="refusing"):
        verify_run_folder(out)
    assert read_json(out / "artifacts" / "compressed.json") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_manifest_entry_leaving_the_folder_is_refused(tmp_path, exported):
    out = run_folder(tmp_path, exported[0])
    write_json_atomic(out / "manifest.json", {"artifacts": {"../../etc/passwd": "0"}})
    with pytest.raises(InputError, match="manifest entry '../../etc/passwd' leaves the folder"):
        verify_run_folder(out)
