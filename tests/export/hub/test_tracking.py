"""``report.mlflow`` (issue 31): a run and a two-trial search logged to a local MLflow store, read back
with MLflow's own client: the recipe as params, report.json's figures as metrics, the report as artifacts,
each trial a child run of the search's run."""

import json

import pytest

import compress
from compress.core.errors import InputError
from tests.tiny_models import mlp, vector_data

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

RECIPE = {
    "name": "tracked",
    "passes": [{"pass": "structured_prune", "ratio": 0.5, "round_to": 1}],
    "export": {"exporter": "torchscript", "baseline": False},
    "report": {"batch_sizes": [2], "warmup": 1, "iterations": 3, "max_seconds": 0.5, "mlflow": {}},
}


@pytest.fixture(autouse=True)
def _no_tracking_server(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _client(folder) -> tuple[MlflowClient, str]:
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow' / 'mlflow.db'}")
    return client, client.get_experiment_by_name("tracked").experiment_id


def test_a_run_is_logged_in_the_run_folder_with_its_params_metrics_and_artifacts(tmp_path):
    result = compress.run(mlp(), RECIPE, vector_data(), out_dir=tmp_path / "run")
    client, experiment = _client(tmp_path / "run")
    (run,) = client.search_runs([experiment])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert run.data.params["passes/0/structured_prune/ratio"] == "0.5"
    assert run.data.params["recipe_sha256"] == report["recipe"]["sha256"]
    metrics = run.data.metrics
    assert metrics["stage/structured_prune/accuracy"] == result.metrics["structured_prune"]
    compressed = next(a for a in report["artifacts"] if a["name"] == "compressed")
    assert metrics["artifact/compressed/size_bytes"] == compressed["size_bytes"]
    assert metrics["artifact/compressed/accuracy"] == compressed["metric"]["value"]
    assert metrics["artifact/compressed/parity/max_abs_diff"] == compressed["parity"]["max_abs_diff"]
    ort_row = next(r for r in compressed["latency"] if r["provider"] == "CPUExecutionProvider")
    assert metrics["artifact/compressed/p50_ms/CPUExecutionProvider/batch_2"] == ort_row["p50_ms"]
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.html", "report.json", "report.md"}
    assert (tmp_path / "run" / "mlflow" / "artifacts").is_dir()  # nothing outside the run folder


def test_a_two_trial_search_is_a_parent_run_with_a_child_run_per_trial(tmp_path):
    passes = [*RECIPE["passes"], {"pass": "distill", "epochs": 1}]
    search = {"objective": "size", "batch_size": 2, "max_drop": 100.0, "prune_ratios": [0.5], "quantize": ["none"]}
    search |= {"distill_fractions": [1.0], "validation_batches": 1}  # one rung: no finalist is distilled again
    recipe = {**RECIPE, "passes": passes, "search": search}
    result = compress.search(mlp(), recipe, vector_data(), out_dir=tmp_path / "s")
    assert len(result.trials) == 2  # the fp32 baseline and one candidate
    client, experiment = _client(tmp_path / "s")
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(c.data.tags["mlflow.runName"] for c in children) == sorted(t["label"] for t in result.trials)
    candidate = next(c for c in children if c.data.tags["mlflow.runName"] != "fp32 baseline")
    trial = next(t for t in result.trials if t["label"] == candidate.data.tags["mlflow.runName"])
    assert candidate.data.params["passes/0/structured_prune/ratio"] == "0.5"
    point = trial["points"][0]
    assert candidate.data.metrics[f"{point['name']}/size_bytes"] == point["size_bytes"]
    assert parent.data.metrics["chosen/size_bytes"] == result.chosen["size_bytes"]
    assert "report.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_without_mlflow_installed_the_recipe_is_refused_before_any_work(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(InputError, match=r"pip install modelpress\[mlflow\]"):
        compress.run(mlp(), RECIPE, vector_data(), out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "stages").exists()
