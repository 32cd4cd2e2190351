"""report.json follows its schema; report.md and report.html render every row; the summary recommends."""

import copy
import json

import jsonschema
import pytest

from compress.engine.stages import StageResult
from compress.recipe.schema import load_recipe
from export.measure.environment import GPU_NOT_MEASURED, collect_environment
from export.report.build import SCHEMA, SCHEMA_FILE, build_report, recommend, write_report
from export.report.render import render_html, render_markdown
from export.report.summary import pareto_front

ENV = collect_environment()
CPU = ENV["cpu"]


def latency(batch_size, p50, runtime="onnxruntime", device_name=CPU):
    return {
        "device": "cpu",
        "device_name": device_name,
        "runtime": runtime,
        "provider": "CPUExecutionProvider" if runtime == "onnxruntime" else "torch-cpu",
        "batch_size": batch_size,
        "threads": 2,
        "iterations": 10,
        "p50_ms": p50,
        "p90_ms": p50 * 1.5,
        "p99_ms": p50 * 2,
        "mean_ms": p50 * 1.2,
        "throughput_per_s": batch_size * 1000 / p50,
    }


def artifact(name, metric, size, p50_by_batch, **extra):
    return {
        "name": name,
        "path": f"artifacts/{name}.onnx",
        "format": "onnx",
        "precision": "fp32",
        "source_stage": "baseline",
        "status": "passed",
        "opset": 18,
        "size_bytes": size,
        "size_gzip_bytes": size // 2,
        "sha256": "0" * 64,
        "metric": {"name": "accuracy", "value": metric, "runtime": "onnxruntime"},
        "parity": {"passed": True, "max_abs_diff": 1e-6, "min_cosine": 1.0, "samples": 8, "failures": []},
        "latency": [latency(b, p) for b, p in p50_by_batch.items()],
        **extra,
    }


BASELINE = artifact("baseline", 0.99, 2_000_000, {1: 0.2, 32: 4.0})
FAST = artifact("fast", 0.985, 500_000, {1: 0.1, 32: 1.0})
FASTEST_BUT_BAD = artifact("broken", 0.90, 400_000, {1: 0.05, 32: 0.5}, warnings=["parity weak against ..."])
FAILED = {
    "name": "compressed",
    "path": "x",
    "format": "onnx",
    "precision": "fp32",
    "status": "failed",
    "opset": 18,
    "error": "parity failed: max abs diff 1 > atol 0.0001",
}


def stage(index, name, metric, nonzero):
    layers = [
        {"name": "fc", "type": "Linear", "params": 100, "nonzero": nonzero, "sparsity": 0.0, "precision": "float32"}
    ]
    return StageResult(
        index, name, None, None, "accuracy", metric, 100, nonzero, 0.1, "f", {}, 1000 - index * 500, 400, layers
    )


def make_report(artifacts=None):
    recipe = load_recipe({"name": "r", "passes": [{"pass": "magnitude_prune"}]})
    stages = [stage(0, "baseline", 1.0, 100), stage(1, "magnitude_prune", 0.98, 51)]
    # deep copies: a test that edits its report must not edit the shared records other tests read
    chosen = copy.deepcopy(artifacts or [BASELINE, FAST, FASTEST_BUT_BAD, FAILED])
    return build_report(recipe, stages, chosen, ENV)


def test_pareto_front_keeps_only_undominated_points():
    # (cost, metric): the second is dominated by the first (dearer and worse).
    assert pareto_front([(1.0, 0.9), (2.0, 0.8), (0.5, 0.7), (3.0, 0.95)]) == [0, 2, 3]


def test_recommendation_is_the_fastest_within_the_budget():
    best = recommend([BASELINE, FAST, FASTEST_BUT_BAD, FAILED], 0.01, CPU)
    assert best["name"] == "fast"  # broken is faster but 0.09 below the baseline
    assert "0.25× baseline" in best["reason"]
    assert recommend([BASELINE, FAST], 0.001, CPU)["name"] == "baseline"
    assert recommend([FAST], 0.01, CPU) is None  # no baseline to measure the drop against


def test_report_follows_its_schema_and_names_the_gpu_state():
    report = make_report()
    assert report["schema"] == SCHEMA
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(report)
    assert report["summary"]["recommended"]["name"] == "fast"
    assert "broken: parity weak against ..." in report["summary"]["warnings"]
    assert any(w.startswith("compressed: parity failed") for w in report["summary"]["warnings"])
    if not ENV["gpu"]["available"]:
        assert report["gpu"] == {"measured": False, "devices": [], "note": GPU_NOT_MEASURED}
    assert "warm-up" in report["latency_method"] and "p99" in report["latency_method"]


def test_schema_rejects_a_report_missing_what_it_documents():
    schema = json.loads(SCHEMA_FILE.read_text())
    report = make_report()
    del report["artifacts"][0]["latency"][0]["p99_ms"]
    with pytest.raises(jsonschema.ValidationError, match="p99_ms"):
        jsonschema.validate(report, schema)
    report = make_report()
    report["gpu"] = {"measured": False, "devices": [], "note": ""}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, schema)


def test_markdown_shows_summary_stages_artifacts_failures_and_latency():
    text = render_markdown(make_report())
    assert "**Recommended artifact: `fast`**" in text
    assert (
        "| magnitude_prune | accuracy 0.9800 | -0.0200 | 100 | 51 (0.51×) | 500 (0.50×) | 0.000 MB (1.00×) | 0.1 |"
        in text
    )
    assert "| baseline | passed | accuracy 0.9900 | +0.0000 | 1.00e-06 / 1.00000 | 2.000 MB (1.00×) |" in text
    assert "**compressed failed:** parity failed: max abs diff 1 > atol 0.0001" in text
    row = f"| fast | cpu: {CPU} | onnxruntime (CPUExecutionProvider) | 32 | 2 | 1.000 | 1.500 | 2.000 | 32,000.0 |"
    assert row + " 0.25× |" in text
    if not ENV["gpu"]["available"]:
        assert f"{GPU_NOT_MEASURED}." in text


def test_write_report_writes_json_markdown_self_contained_html_and_plots(tmp_path):
    path = write_report(tmp_path, make_report())
    report = json.loads(path.read_text())
    assert report["schema"] == SCHEMA
    assert set(report["plots"]) == {"metric_vs_latency", "metric_vs_size", "layers"}
    for plot in report["plots"].values():
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (tmp_path / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == 3
    assert "http://" not in html and "https://" not in html  # opens offline
    assert html == render_html(report, tmp_path)
    assert "<strong>Recommended artifact: <code>fast</code></strong>" in html
    assert (tmp_path / "report.md").read_text().startswith("# modelpress report: r")


def test_a_stale_row_is_shown_as_such_and_compared_with_no_fresh_one():
    stale = {"stale": True, "stale_reason": "torch rows not re-measured: pass --trust-run"}
    base = {**BASELINE, "latency": [*BASELINE["latency"], latency(32, 3.0, runtime="torch")]}
    fast = {**FAST, "latency": [*FAST["latency"], {**latency(32, 9.0, runtime="torch"), **stale}]}
    markdown = render_markdown(make_report([base, fast]))
    (line,) = [row for row in markdown.splitlines() if row.startswith("| fast |") and "torch (torch-cpu)" in row]
    assert "**not re-measured**" in line and "3.00×" not in line and "| – |" in line
    assert "1 latency rows of fast are from an earlier measurement, marked stale" in markdown
    # A stale ONNX Runtime row of this CPU is no headline figure: the recommendation falls back to the baseline.
    old_fast = {**FAST, "latency": [{**e, **stale} for e in FAST["latency"]]}
    assert recommend([BASELINE, FAST], 0.01, CPU)["name"] == "fast"
    assert recommend([BASELINE, old_fast], 0.01, CPU)["name"] == "baseline"


def test_budget_sensitivity_shows_the_cheap_ranking_beside_the_measured_drops():
    budget = {
        "reference": 0.99,
        "metric": 0.985,
        "float_layers": ["conv2"],
        "met": True,
        "budget": 0.005,
        "sensitivity": {"conv2": 0.03, "conv1": 0.0},
        "evaluations": 4,
        "sqnr_db": {"conv1": 31.25, "conv2": 12.04, "fc": 40.0},
        "candidates": 2,
        "drop": 0.005,
        "split": "validation",
    }
    quantized = artifact("int8", 0.985, 600_000, {1: 0.1}, scheme="int8_static", budget=budget, float_nodes=["conv2"])
    text = render_markdown(make_report([BASELINE, quantized]))
    assert "### int8: sensitivity of the accuracy budget" in text
    assert "was measured for the 2 lowest; 4 metric evaluations in all" in text
    table = "| `conv2` | 12.0 | +0.0300 | yes |\n| `conv1` | 31.2 | +0.0000 |  |\n| `fc` | 40.0 | not measured |  |"
    assert table in text
