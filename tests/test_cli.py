"""The command line: exit codes, one-line errors without tracebacks, help with examples, a full run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = """
name: tiny
model: {factory: "tests.tiny_models:residual_cnn"}
data: {factory: "tests.tiny_models:image_data"}
passes:
  - {pass: magnitude_prune, sparsity: 0.5}
report: {batch_sizes: [1, 4], warmup: 1, iterations: 5, max_seconds: 0.5}
"""


def modelpress(*args, cwd=ROOT):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "compress.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env
    )


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("bad", "expected"),
    [
        ("sparsty: 0.5", "passes[0] (magnitude_prune).sparsty: unknown key 'sparsty'; did you mean 'sparsity'?"),
        ("sparsity: 1.5", "passes[0] (magnitude_prune).sparsity: 1.5 is out of range; must be in [0.0, 1.0)"),
    ],
)
def test_bad_pass_key_exits_2_with_one_line(tmp_path, bad, expected):
    recipe = write(tmp_path, TINY_RECIPE.replace("sparsity: 0.5", bad))
    result = modelpress("run", recipe, "--out", tmp_path / "out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"modelpress: error: {recipe}: {expected}")
    assert not (tmp_path / "out").exists()


def test_unknown_pass_exits_2_listing_known_passes(tmp_path):
    recipe = write(tmp_path, TINY_RECIPE.replace("pass: magnitude_prune", "pass: prune_magnitude"))
    result = modelpress("run", recipe)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "unknown pass 'prune_magnitude'" in line and "known passes: " in line and "magnitude_prune" in line


def test_missing_checkpoint_exits_2(tmp_path):
    recipe = write(tmp_path, TINY_RECIPE.replace('residual_cnn"}', 'residual_cnn", checkpoint: absent.pt}'))
    result = modelpress("run", recipe, "--out", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "absent.pt: file not found" in result.stderr


def test_schema_to_a_full_disk_is_one_line():
    with open("/dev/full", "w") as full:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "compress.cli", "schema"]
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "the schema could not be written (No space left on device)" in line


@pytest.mark.parametrize("command", ["run", "demo", "export", "report", "passes"])
def test_every_command_has_help_with_an_example(command):
    result = modelpress(command, "--help")
    assert result.returncode == 0
    assert "example:\n  modelpress " + command in result.stdout


def test_run_then_report_then_export(tmp_path):
    recipe = write(tmp_path, TINY_RECIPE)
    out = tmp_path / "out"
    result = modelpress("run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "report.json")
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["baseline", "magnitude_prune"]
    assert [a["status"] for a in report["artifacts"]] == ["passed", "passed"]
    assert {e["batch_size"] for e in report["artifacts"][1]["latency"]} == {1, 4}

    # A measurement from another machine (as if the run had been re-measured on a GPU box) is kept,
    # keyed by device; this machine's entries are measured again and replaced, not duplicated.
    record_path = out / "artifacts" / "compressed.json"
    record = json.loads(record_path.read_text())
    cpu_entries = len(record["latency"])
    gpu = {"device": "cuda", "device_name": "Other GPU", "runtime": "onnxruntime", "provider": "CUDAExecutionProvider"}
    other = {**record["latency"][0], **gpu}
    record_path.write_text(json.dumps({**record, "latency": [*record["latency"], other]}))
    (out / "report.json").unlink()
    assert modelpress("report", out).returncode == 0
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"][0]["metric"]["runtime"] == "onnxruntime"
    latency = report["artifacts"][1]["latency"]
    (kept,) = [e for e in latency if e["device_name"] == "Other GPU"]
    assert len(latency) == cpu_entries + 1 and kept == {**other, "stale": True, "stale_reason": kept["stale_reason"]}
    assert "not re-measured on this machine" in kept["stale_reason"]  # kept, marked as not measured again
    note = "GPU: measured on Other GPU (earlier measurements, not re-measured here)"
    assert report["gpu"] == {"measured": True, "devices": ["Other GPU"], "note": note}

    export_out = tmp_path / "export-only"
    result = modelpress("export", recipe, "--out", export_out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["artifacts/baseline.onnx", "artifacts/compressed.onnx"]
    assert not (export_out / "report.json").exists()


def test_report_on_a_folder_that_is_not_a_run(tmp_path):
    result = modelpress("report", tmp_path)
    assert result.returncode == 2
    assert "not a modelpress run folder" in result.stderr
