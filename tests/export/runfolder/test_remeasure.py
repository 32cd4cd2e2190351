"""``modelpress report DIR`` re-measures from the run folder alone (issue 14, item 3): the stored
held-out sample scores the metric, the stored torch outputs check parity, and no code named by the
folder runs without ``--trust-run``."""

import json
import shutil

import pytest
import torch
import yaml

import compress
from compress.cli import main
from compress.models.evaluate import Evaluator
from export.runfolder.evidence import StoredData, store_heldout
from tests.tiny_models import mlp, token_data, vector_data

QUICK_REPORT = {"batch_sizes": [1], "warmup": 1, "iterations": 3, "max_seconds": 1.0}
# TorchScript exports a tiny MLP in a fraction of dynamo's time; the exporter is not under test here.
EXPORT = {"baseline": True, "exporter": "torchscript"}

# Factories that leave a marker file behind whenever they run: the proof that code ran.
FACTORIES = """
import pathlib

from tests.tiny_models import mlp, vector_data

MARKER = pathlib.Path(__file__).with_name("code-ran.marker")


def model():
    MARKER.write_text("model")
    return mlp()


def data():
    MARKER.write_text("data")
    return vector_data()
"""


CUSTOM_METRIC = """
def share_of_positive(predict, batches):
    return float(sum((predict(x)[:, 0] > 0).float().mean() for x, _ in batches))
"""


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    """A run made through recipe factories that write a marker; the marker removed afterwards."""
    root = tmp_path_factory.mktemp("made")
    (root / "remeasure_marker_factories.py").write_text(FACTORIES)
    recipe = {
        "name": "marked",
        "model": {"factory": "remeasure_marker_factories:model"},
        "data": {"factory": "remeasure_marker_factories:data"},
        "passes": [
            {"pass": "magnitude_prune", "sparsity": 0.5},
            {"pass": "quantize", "onnx": [{"scheme": "int8_dynamic"}]},  # checked against its fp32 source's outputs
        ],
        "export": EXPORT,
        "report": QUICK_REPORT,
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    compress.run_recipe(root / "recipe.yaml", root / "run")
    (root / "code-ran.marker").unlink()
    return root


@pytest.fixture
def copied(made_run, tmp_path):
    """A copy of the run folder, as carried to another machine."""
    return shutil.copytree(made_run / "run", tmp_path / "copy"), made_run / "code-ran.marker"


def artifacts(out) -> dict:
    return {a["name"]: a for a in json.loads((out / "report.json").read_text())["artifacts"]}


def test_report_runs_no_code_from_the_folder_and_re_measures_from_stored_inputs(copied):
    out, marker = copied
    assert main(["report", str(out)]) == 0
    assert not marker.exists()
    assert set(artifacts(out)) == {"baseline", "compressed", "compressed-int8_dynamic"}
    for record in artifacts(out).values():
        assert record["status"] == "passed" and record["metric"]["runtime"] == "onnxruntime"
        assert record["parity"]["reference"].endswith(".reference.npz") and record["parity"]["passed"]
    assert main(["report", str(out), "--trust-run"]) == 0  # the marker test can fail: trusted code does run
    assert marker.exists()
    marker.unlink()


def test_a_replaced_artifact_is_re_verified_against_the_stored_reference(copied):
    out, _ = copied
    # The unpruned baseline in place of the pruned artifact: parity against the stored reference must catch it.
    shutil.copy(out / "artifacts" / "baseline.onnx", out / "artifacts" / "compressed.onnx")
    assert main(["report", str(out)]) == 1  # an artifact that fails parity: exit 1, as after a run
    record = artifacts(out)["compressed"]
    assert record["status"] == "changed" and "re-verified against the stored reference" in record["error"]
    assert record["parity"]["passed"] is False and record["parity"]["max_abs_diff"] > 1e-3
    assert record["parity"]["reference"] == "artifacts/compressed.reference.npz"


def test_a_corrupt_artifact_is_reported_changed_not_a_crash(copied, capsys):
    out, _ = copied
    (out / "artifacts" / "compressed.onnx").write_bytes(b"\x08\x07 not a protobuf model")
    assert main(["report", str(out)]) == 1  # an artifact that fails its checks, not an internal error (3)
    assert "Traceback" not in capsys.readouterr().err
    record = artifacts(out)["compressed"]
    assert record["status"] == "changed" and "not a readable ONNX model" in record["error"]
    assert "parity" not in record and "latency" not in record and "size_bytes" not in record
    assert artifacts(out)["baseline"]["status"] == "passed"


@pytest.mark.parametrize(
    ("damage", "expected"),
    [("corrupt", "heldout.npz"), ("missing", "compressed.reference.npz")],
)
def test_a_corrupt_or_missing_npz_is_one_line_exit_2(copied, capsys, damage, expected):
    out, _ = copied
    if damage == "corrupt":
        (out / "artifacts" / "heldout.npz").write_bytes(b"not a zip file")
    else:
        (out / "artifacts" / "compressed.reference.npz").unlink()
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0] and "re-run 'modelpress run'" in err[0]
    assert "Traceback" not in err[0]


def test_an_in_memory_api_run_is_re_measured_by_modelpress_report(tmp_path):
    recipe = {"passes": [{"pass": "magnitude_prune", "sparsity": 0.5}], "export": EXPORT, "report": QUICK_REPORT}
    compress.run(mlp(), recipe, vector_data(), out_dir=tmp_path / "api")
    assert main(["report", str(tmp_path / "api")]) == 0
    for record in artifacts(tmp_path / "api").values():
        assert "metric" in record and record["parity"]["passed"]


def test_a_custom_metric_is_reported_as_not_re_measured_without_trust(tmp_path):
    (tmp_path / "remeasure_custom_metric.py").write_text(CUSTOM_METRIC)
    recipe = {
        "passes": [{"pass": "magnitude_prune", "sparsity": 0.5}],
        "task": {"metric": "remeasure_custom_metric:share_of_positive"},
        "export": EXPORT,
        "report": QUICK_REPORT,
    }
    compress.run(mlp(), recipe, vector_data(), out_dir=tmp_path / "run", search_dir=tmp_path)
    assert main(["report", str(tmp_path / "run")]) == 0
    for record in artifacts(tmp_path / "run").values():
        assert "metric" not in record and record["parity"]["passed"] and record["latency"]
        assert any("metric not re-measured" in w and "--trust-run" in w for w in record["warnings"])


def torch_rows(out) -> dict[str, list[dict]]:
    return {name: [e for e in a.get("latency", []) if e["runtime"] == "torch"] for name, a in artifacts(out).items()}


def test_torch_rows_not_re_measured_are_marked_stale_and_compared_with_nothing(copied):
    out, marker = copied
    before = torch_rows(out)
    assert before["baseline"] and before["compressed"] and not before["compressed-int8_dynamic"]
    assert main(["report", str(out)]) == 0
    after = torch_rows(out)
    for name in ("baseline", "compressed"):
        assert len(after[name]) == len(before[name])
        for old, row in zip(before[name], after[name]):
            assert row["stale"] is True and "--trust-run" in row["stale_reason"]
            assert (row["measured_at"], row["p50_ms"]) == (old["measured_at"], old["p50_ms"])  # the old figure, kept
    for record in artifacts(out).values():
        ort = [e for e in record["latency"] if e["runtime"] == "onnxruntime"]
        assert ort and not any(e.get("stale") for e in ort)  # re-measured here, so replaced
    summary = json.loads((out / "report.json").read_text())["summary"]
    (stale,) = [w for w in summary["warnings"] if "marked stale" in w]
    count = len(before["baseline"]) + len(before["compressed"])
    assert stale.startswith(f"{count} latency rows of baseline, compressed") and "--trust-run" in stale
    markdown = (out / "report.md").read_text()
    torch_lines = [line for line in markdown.splitlines() if "| torch (torch-cpu) |" in line]
    assert len(torch_lines) == count and all("**not re-measured**" in line for line in torch_lines)
    assert not marker.exists()


def test_trust_run_rebuilds_the_torch_model_and_re_measures_its_rows(copied):
    out, marker = copied
    assert main(["report", str(out), "--trust-run"]) == 0
    assert marker.exists()  # the factory ran: that is what --trust-run allows
    marker.unlink()
    after = torch_rows(out)
    assert after["baseline"] and after["compressed"]
    assert not any(row.get("stale") for rows in after.values() for row in rows)
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert not any("marked stale" in w for w in summary["warnings"])


def test_torch_rows_of_an_api_run_stay_marked_even_with_trust_run(tmp_path):
    recipe = {"passes": [{"pass": "magnitude_prune", "sparsity": 0.5}], "export": EXPORT, "report": QUICK_REPORT}
    compress.run(mlp(), recipe, vector_data(), out_dir=tmp_path / "api")
    assert main(["report", str(tmp_path / "api"), "--trust-run"]) == 0
    rows = [row for rows in torch_rows(tmp_path / "api").values() for row in rows]
    assert rows and all(row["stale"] and "Python API run" in row["stale_reason"] for row in rows)


def test_warnings_printed_during_the_run_are_in_the_report_and_kept_by_re_measurement(tmp_path):
    from compress.recipe.schema import usable_cores

    recipe = {
        # Static int8 asks for 512 calibration rows where vector_data has 8; 1024 threads are capped to the cores.
        "passes": [{"pass": "quantize", "onnx": [{"scheme": "int8_static", "calibration": {"samples": 512}}]}],
        "export": EXPORT,
        "report": {**QUICK_REPORT, "threads": 1024},
    }
    printed = [  # in the order printed: the recipe is validated before the passes run
        f"report.threads: 1024 is more than the {usable_cores()} usable cores; using {usable_cores()}",
        "quantize: 8 calibration rows available, fewer than the 512 requested",
    ]
    compress.run(mlp(), recipe, vector_data(), out_dir=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "report.json").read_text())["summary"]
    assert all(summary["warnings"].count(text) == 1 for text in printed) and summary["run_warnings"] == printed
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert all(f"- {text}" in markdown.splitlines() for text in printed)
    assert main(["report", str(tmp_path / "run")]) == 0  # prints neither again, and keeps both
    summary = json.loads((tmp_path / "run" / "report.json").read_text())["summary"]
    assert summary["run_warnings"] == printed and all(text in summary["warnings"] for text in printed)
    assert all(f"- {text}" in (tmp_path / "run" / "report.md").read_text().splitlines() for text in printed)


def test_dict_and_tuple_inputs_round_trip_with_their_names(tmp_path):
    (tmp_path / "artifacts").mkdir()
    data = token_data()
    store_heldout(tmp_path, Evaluator("accuracy", score=None), data, "accuracy")
    stored = StoredData(tmp_path)
    for (inputs, labels), (original, gold) in zip(stored.batches("eval"), data.batches("eval")):
        assert list(inputs) == ["input_ids", "attention_mask"]
        assert all(torch.equal(inputs[k], original[k]) for k in original) and torch.equal(labels, gold)
    pairs = Evaluator("pairs", score=None, inputs_of=lambda b: [b[0]])
    tuples = [((torch.ones(2, 3), torch.zeros(2, dtype=torch.long)), torch.tensor([1, 0]))]
    store_heldout(tmp_path, pairs, compress.TaskData(eval=tuples), "accuracy")
    ((inputs, labels),) = StoredData(tmp_path).batches("eval")
    assert isinstance(inputs, tuple) and torch.equal(inputs[1], tuples[0][0][1]) and labels.tolist() == [1, 0]
