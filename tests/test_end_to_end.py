"""compress.run on tiny models, and the demo: ONNX artifacts verified and measured, report written."""

import json
import os
import sys
from pathlib import Path

import jsonschema
import pytest
import torch

import compress
from compress.models.evaluate import EVALUATORS, torch_predictor
from export.report.build import SCHEMA_FILE
from tests.terminal import BAR, run_on_terminal
from tests.tiny_models import TINY_ARCHS

ROOT = Path(__file__).resolve().parents[1]
QUICK_REPORT = {"batch_sizes": [1, 4], "warmup": 1, "iterations": 5, "max_seconds": 0.5}


@pytest.mark.parametrize("arch", list(TINY_ARCHS))
def test_run_returns_compressed_model_metrics_and_files(arch, tmp_path):
    factory, data_factory = TINY_ARCHS[arch]
    recipe = {"name": arch, "passes": [{"pass": "magnitude_prune", "sparsity": 0.8}], "report": QUICK_REPORT}
    result = compress.run(factory(), recipe, data=data_factory(), out_dir=tmp_path)
    assert result.failures == []
    assert isinstance(result.model, torch.nn.Module)
    torch_metric = EVALUATORS["accuracy"].score(torch_predictor(result.model), data_factory().eval)
    assert result.metrics["magnitude_prune"] == torch_metric
    by_name = {a["name"]: a for a in result.artifacts}
    # fp32 export: the metric measured in ONNX Runtime equals the torch metric.
    assert by_name["compressed"]["metric"]["value"] == torch_metric
    assert by_name["compressed"]["size_gzip_bytes"] < by_name["baseline"]["size_gzip_bytes"]
    assert json.loads(result.report_path.read_text())["stages"][1]["nonzero_params"] < result.stages[0].params


def test_typed_configs_and_plain_iterable_data(tmp_path):
    from compress.passes.magnitude_prune import MagnitudePruneConfig

    factory, data_factory = TINY_ARCHS["mlp"]
    result = compress.run(
        factory(), [MagnitudePruneConfig(sparsity=0.5)], data_factory().eval, out_dir=tmp_path, report=False
    )
    assert [a["status"] for a in result.artifacts] == ["passed", "passed"]
    assert result.report_path is None


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One fresh demo (empty model cache) shared by the demo tests: (run folder, finished process). Its
    stderr is a pseudo-terminal, as a person's would be (progress bars are drawn there), its stdout a pipe."""
    tmp = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MODELPRESS_CACHE": str(tmp / "cache")}
    out = tmp / "demo"
    result = run_on_terminal(
        [sys.executable, "-m", "compress.cli", "demo", "--out", str(out)],
        env,
        timeout=1800,  # a hang guard only: a loaded 2-core machine runs the demo several times slower
    )
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.mark.slow
def test_demo_trains_compresses_exports_and_reports(demo_run):
    out, _ = demo_run
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_FILE.read_text()))
    baseline, *_, final = report["stages"]
    assert baseline["metric"]["value"] >= 0.97
    assert [s["name"] for s in report["stages"]] == ["baseline", "structured_prune", "distill", "quantize"]
    # Pruning halves every channel group (about 0.25x params); distillation recovers the accuracy.
    assert final["params"] <= 0.3 * baseline["params"] and final["macs"] <= 0.3 * baseline["macs"]
    assert final["metric"]["value"] >= baseline["metric"]["value"] - 0.01
    artifacts = {a["name"]: a for a in report["artifacts"]}
    assert list(artifacts) == ["baseline", "compressed", "int8"]
    for artifact in artifacts.values():
        assert artifact["parity"]["passed"] and artifact["metric"]["runtime"] == "onnxruntime"
        assert {e["batch_size"] for e in artifact["latency"] if e["runtime"] == "onnxruntime"} == {1, 32}
        assert (
            artifact["ort_format"]["status"] == "passed"
            and (out / "artifacts" / artifact["ort_format"]["path"]).is_file()
        )
        cpu = next(e for e in artifact["provider_support"] if e["provider"] == "CPUExecutionProvider")
        assert cpu["supported"]
    assert artifacts["compressed"]["size_bytes"] <= 0.3 * artifacts["baseline"]["size_bytes"]
    assert artifacts["int8"]["size_bytes"] <= 0.1 * artifacts["baseline"]["size_bytes"]
    assert artifacts["int8"]["metric"]["value"] >= artifacts["baseline"]["metric"]["value"] - 0.005
    assert report["summary"]["recommended"]["name"] in artifacts
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(report["plots"]) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["artifacts"]) >= {"artifacts/int8.onnx", "artifacts/int8.ort"}
    assert not (out / "scratch").exists()  # in-progress state only; removed when every stage completed


@pytest.mark.slow
def test_fresh_demo_reproduces_the_committed_stage_metrics(demo_run):
    # Fresh cache: the demo model is trained in this run. Latency and timings aside, every stage
    # figure equals reports/demo (regenerated on the same thread count; see compress.demo.digits.train).
    out, _ = demo_run
    keys = ("name", "metric", "params", "nonzero_params", "macs")
    fresh = [{k: s[k] for k in keys} for s in json.loads((out / "report.json").read_text())["stages"]]
    committed = json.loads((ROOT / "reports" / "demo" / "report.json").read_text())["stages"]
    assert fresh == [{k: s[k] for k in keys} for s in committed]


@pytest.mark.slow
def test_demo_keeps_third_party_output_off_the_terminal_and_in_run_log(demo_run):
    out, result = demo_run
    log = (out / "run.log").read_text()
    for marker in ("Warning!", "UserWarning", "FutureWarning", "DeprecationWarning", "[torch.onnx]", "onnxruntime"):
        assert marker not in result.stderr, marker
    assert result.stdout.strip() == str(out / "report.json")
    # modelpress's own messages go to both; the log has them whole (the terminal wraps at its width).
    for line in ("stage 1/3: structured_prune", "  distill epoch 15:", "quantize int8 (int8_static)", "manifest: "):
        assert line in log
    assert "stage 1/3: structured_prune" in result.stderr


@pytest.mark.slow
def test_demo_draws_progress_bars_with_an_eta_on_a_terminal(demo_run):
    _, result = demo_run
    assert BAR in result.stderr and "eta" in result.stderr  # distillation's bar, with its ETA column
    for step in ("training", "exporting compressed", "quantizing int8", "calibrating", "timing 3 artifacts"):
        assert step in result.stderr, step
    assert BAR not in (result.stdout + "").strip()  # stdout keeps the results only


@pytest.mark.slow
def test_load_demo_final_model_matches_its_onnx_artifact(demo_run):
    import onnxruntime as ort

    from compress.demo.digits import build_model, load_data

    out, _ = demo_run
    model = compress.load(out, model=build_model())  # skeleton: the run's factory would train again
    inputs = torch.cat([x for x, _ in load_data().eval])
    with torch.no_grad():
        expected = model(inputs).numpy()
    session = ort.InferenceSession(str(out / "artifacts" / "compressed.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    assert (
        sum(p.numel() for p in model.parameters())
        == json.loads((out / "report.json").read_text())["stages"][-1]["params"]
    )
    assert abs(got - expected).max() <= 1e-4  # the demo recipe's parity atol
