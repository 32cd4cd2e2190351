"""Experiment tracking in MLflow (``report.mlflow``, ``pip install modelpress[mlflow]``): each run as an
MLflow run (the recipe as params; every stage's metric, every artifact's size, parity, metric and
latency as metrics; report.html, report.json and the model cards as artifacts), and a search as a
parent run with one child run per trial.

MLflow's own client (``MlflowClient``) writes everything, so any store it supports works: a tracking
server, a database, ``$MLFLOW_TRACKING_URI``. With neither a URI nor the variable, the store is an
SQLite file in the run folder (``mlflow/mlflow.db``, artifacts in ``mlflow/artifacts``), so that a run
writes nothing outside its folder. mlflow is imported only here, only when a recipe asks for it.
"""

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from compress.core.errors import InputError

FOLDER = "mlflow"  # the local store inside a run or search folder
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")  # what MLflow accepts in a param or metric key
BATCH = 100  # MLflow's log_batch takes at most 100 params (and 1000 metrics) a call


def require_mlflow() -> None:
    """Before any work: a recipe asking for tracking needs MLflow installed (exit 2 otherwise)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise InputError(
            "report.mlflow: MLflow is not installed; pip install modelpress[mlflow], or drop report.mlflow"
        )


def _key(*parts: object) -> str:
    return _UNSAFE.sub("_", "/".join(str(p) for p in parts))[:250]


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested recipe as MLflow params: ``passes/0/structured_prune/head_ratio`` -> ``0.3334``."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value) and value:
        items = ((f"{i}/{v.get('pass', v.get('scheme', ''))}".rstrip("/"), v) for i, v in enumerate(value))
    else:
        return {_key(prefix): json.dumps(value) if isinstance(value, (list, dict)) else str(value)}
    params = {}
    for key, inner in items:
        params.update(flatten(inner, f"{prefix}/{key}" if prefix else str(key)))
    return params


def _client(spec, out_dir: Path, default_experiment: str):
    from mlflow.tracking import MlflowClient

    uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    local = uri is None
    if local:
        (out_dir / FOLDER).mkdir(exist_ok=True)
        uri = f"sqlite:///{(out_dir / FOLDER / 'mlflow.db').resolve()}"
    client = MlflowClient(tracking_uri=uri)
    name = spec.experiment or default_experiment
    found = client.get_experiment_by_name(name)
    if found is not None:
        return client, found.experiment_id
    # A database store puts artifacts in ./mlartifacts of the working directory unless told: beside the database.
    location = None
    if uri.startswith("sqlite:///"):
        database = Path(uri.removeprefix("sqlite:///"))
        location = (database.parent / ("artifacts" if local else "mlartifacts")).resolve().as_uri()
    return client, client.create_experiment(name, artifact_location=location)


def _log(client, run_id: str, params: dict[str, str], metrics: dict[str, float]) -> None:
    from mlflow.entities import Metric, Param

    stamp = int(time.time() * 1000)
    param_list = [Param(k, v[:6000]) for k, v in params.items()]
    metric_list = [Metric(k, float(v), stamp, 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    for start in range(0, max(len(param_list), len(metric_list)), BATCH):
        chunk = slice(start, start + BATCH)
        client.log_batch(run_id, metrics=metric_list[chunk], params=param_list[chunk])


def run_metrics(report: dict) -> dict[str, float]:
    """The figures of a report.json as MLflow metrics, named by stage or artifact."""
    metrics = {}
    for stage in report["stages"]:
        metrics[_key("stage", stage["name"], stage["metric"]["name"])] = stage["metric"]["value"]
        metrics[_key("stage", stage["name"], "params")] = stage["params"]
    for artifact in report["artifacts"]:
        name = artifact["name"]
        for field in ("size_bytes", "size_gzip_bytes"):
            if artifact.get(field) is not None:
                metrics[_key("artifact", name, field)] = artifact[field]
        if (artifact.get("metric") or {}).get("value") is not None:
            metrics[_key("artifact", name, artifact["metric"]["name"])] = artifact["metric"]["value"]
        for field, value in (artifact.get("parity") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metrics[_key("artifact", name, "parity", field)] = value
        for row in artifact.get("latency") or []:
            if not row.get("stale") and row.get("p50_ms") is not None:
                metrics[_key("artifact", name, "p50_ms", row["provider"], f"batch_{row['batch_size']}")] = row["p50_ms"]
    return metrics


def log_run(out_dir: Path, spec, report: dict) -> str:
    """Log the run of ``report`` (report.json's content); returns the MLflow run id."""
    from export.report.model_card import card_folders

    recipe = report["recipe"]
    client, experiment = _client(spec, out_dir, recipe["name"])
    run = client.create_run(experiment, run_name=recipe["name"], tags={"modelpress.run_folder": str(out_dir.resolve())})
    run_id = run.info.run_id
    params = flatten({k: v for k, v in recipe.items() if k != "sha256"}) | {"recipe_sha256": recipe["sha256"]}
    _log(client, run_id, params, run_metrics(report))
    for name in ("report.html", "report.json", "report.md"):
        if (out_dir / name).is_file():
            client.log_artifact(run_id, str(out_dir / name))
    for name, folder in card_folders(out_dir, report):
        client.log_artifact(run_id, str(folder / "README.md"), artifact_path=f"model_card/{name}")
    client.set_terminated(run_id)
    return run_id


def log_search(out_dir: Path, spec, name: str, summary: dict, trials: list[dict]) -> str:
    """Log a search: a parent run (its settings and outcome) with one child run per trial."""
    client, experiment = _client(spec, out_dir, name)
    parent = client.create_run(experiment, run_name=f"search {name}", tags={"modelpress.search_folder": str(out_dir)})
    parent_id = parent.info.run_id
    chosen = summary.get("chosen") or {}
    numbers = {k: v for k, v in chosen.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    outcome = {_key("chosen", k): v for k, v in numbers.items()}
    _log(client, parent_id, flatten(summary.get("spec", {}), "search"), outcome)
    for trial in trials:
        tags = {"mlflow.parentRunId": parent_id, "modelpress.trial": trial["key"]}  # MLflow's nesting tag
        child = client.create_run(experiment, run_name=trial["label"], tags=tags)
        metrics = {"seconds": trial.get("seconds", 0.0)}
        for point in trial.get("points", []):
            for field in ("validation_metric", "drop", "p50_ms", "size_bytes", "speedup"):
                if isinstance(point.get(field), (int, float)):
                    metrics[_key(point["name"], field)] = point[field]
        _log(client, child.info.run_id, flatten({"label": trial["label"], "passes": trial["passes"]}), metrics)
        client.set_terminated(child.info.run_id)
    if (out_dir / "report.md").is_file():
        client.log_artifact(parent_id, str(out_dir / "report.md"))
    client.set_terminated(parent_id)
    return parent_id
