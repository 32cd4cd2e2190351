"""report.json carries the documented fields; report.md renders every row."""

import json

from compress.recipe import load_recipe
from compress.stages import StageResult
from export.environment import collect_environment
from export.report import SCHEMA, build_report, render_markdown, write_report

ARTIFACT = {
    "name": "baseline",
    "path": "artifacts/baseline.onnx",
    "format": "onnx",
    "precision": "fp32",
    "status": "passed",
    "opset": 18,
    "size_bytes": 2_000_000,
    "size_gzip_bytes": 1_500_000,
    "metric": {"name": "accuracy", "value": 0.99, "runtime": "onnxruntime"},
    "parity": {"passed": True, "max_abs_diff": 1e-6},
    "latency": [
        {
            "device": "cpu",
            "runtime": "onnxruntime",
            "provider": "CPUExecutionProvider",
            "batch_size": 1,
            "threads": 2,
            "iterations": 10,
            "p50_ms": 0.2,
            "p90_ms": 0.3,
            "mean_ms": 0.25,
        },
    ],
}


def stage(index, name, metric):
    record = {"macs_before": 1000, "macs_after": 500} if index else {}
    return StageResult(index, name, None, None, "accuracy", metric, 100, 50 + index, 0.1, "f", record)


def make_report():
    recipe = load_recipe({"name": "r", "passes": [{"pass": "magnitude_prune"}]})
    failed = {
        "name": "compressed",
        "path": "x",
        "format": "onnx",
        "precision": "fp32",
        "status": "failed",
        "opset": 18,
        "error": "parity failed: max abs diff 1 > atol 0.0001",
    }
    return build_report(
        recipe,
        [stage(0, "baseline", 1.0), stage(1, "magnitude_prune", 0.98)],
        [ARTIFACT, failed],
        collect_environment(),
    )


def test_report_has_required_fields():
    report = make_report()
    assert report["schema"] == SCHEMA
    assert set(report["stages"][0]) >= {"name", "metric", "params", "nonzero_params"}
    assert report["stages"][1]["metric"] == {"name": "accuracy", "value": 0.98}
    env = report["environment"]
    assert env["cores"] >= 1 and env["cpu"] and env["versions"]["torch"]
    assert env["gpu"]["available"] or env["gpu"]["note"] == "GPU: not measured (no CUDA device)"
    assert "warm-up" in report["latency_method"]


def test_markdown_shows_stages_artifacts_failures_and_latency():
    text = render_markdown(make_report())
    assert "| magnitude_prune | accuracy 0.9800 | -0.0200 | 100 | 51 | 500 (0.50×) | 0.1 |" in text
    assert "| baseline | passed | accuracy 0.9900 | 1.00e-06 | 2.000 MB (1.00×) | 1.500 MB (1.00×) | 18 |" in text
    assert "**compressed failed:** parity failed: max abs diff 1 > atol 0.0001" in text
    assert "| baseline | cpu (CPUExecutionProvider) | 1 | 2 | 0.200 | 0.300 | 1.00× |" in text


def test_write_report_writes_json_and_markdown(tmp_path):
    path = write_report(tmp_path, make_report())
    assert json.loads(path.read_text())["schema"] == SCHEMA
    assert (tmp_path / "report.md").read_text().startswith("# modelpress report: r")
