"""The search: claim the folder (``search_folder``), build the space, run the rungs (``rungs``), choose.

The fp32 baseline is the first trial (the recipe without passes): its ONNX file is timed beside
every trial's artifacts, and its validation metric is the reference of the budget. The chosen
point is the cheapest finalist within ``max_drop`` points on the validation split, timed once more
with every other finalist and the baseline, the rows taking turns; the eval split's figure is
reported for it, never used to choose.
"""

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.core import log
from compress.core.errors import InputError
from compress.core.io import ensure_writable, set_active_folder, write_json_atomic
from compress.engine import folder
from compress.engine.job import run_identity
from compress.models.data import as_task_data
from compress.models.evaluate import resolve_evaluator
from compress.recipe.schema import Recipe, load_recipe
from compress.recipe.search_spec import SearchSpec, parse_search_spec
from compress.search import report, strategy
from compress.search.rungs import NothingWithinBudget, Search
from compress.search.search_folder import STATE, claim, measured_on
from compress.search.space import Space, build_space
from compress.search.study import Study, shown_url, storage_url
from compress.search.trials import TrialRunner
from compress.search.workers import Guard, Queue, folder_id, start_local, stop_local, wait_ready, work

__all__ = ["NothingWithinBudget", "SearchResult", "run_search", "search_recipe"]


@dataclass
class SearchResult:
    """The outcome: the chosen point (and the fp32 baseline) with their figures, and the files written."""

    out_dir: Path
    chosen: dict
    baseline: dict
    recipe_path: Path
    report_path: Path
    trials: list[dict] = field(default_factory=list)


def run_search(
    model: torch.nn.Module,
    recipe: Any = None,
    data: Any = None,
    *,
    objective: str | None = None,
    batch_size: int | None = None,
    max_drop: float | None = None,
    budget_minutes: float | None = None,
    prune_ratios: list[float] | None = None,
    quantize: list[str] | None = None,
    out_dir: str | Path | None = None,
    evaluator: Any = None,
    search_dir: Path | None = None,
    force: bool = False,
    workers: int = 1,
    storage: str | None = None,
    join: str | None = None,
    source: tuple | None = None,
) -> SearchResult | int:
    """Search the passes of ``recipe`` (a path, dict or Recipe; None: defaults) for ``model`` on ``data``.

    The keyword options override the recipe's ``search`` section (see ``SearchSpec``); ``max_drop``
    is in points (0.5 = half a point of accuracy). The search folder (default ``searches/<recipe
    name>``) receives the study (``study.db``, or ``storage``: an Optuna storage URL), report.md, plots
    and the chosen point's recipe.yaml; rerunning the same search into it skips the trials it finished.
    ``workers`` processes of this machine run the trials (``compress.search.workers``); ``join``, a
    running search's storage, makes this call one more worker of it instead (it returns the trials it ran).
    """
    if workers < 1 or workers > 64:
        raise InputError(f"--workers {workers}: expected 1 to 64 worker processes")
    recipe: Recipe = load_recipe(recipe if recipe is not None else {})
    if recipe.report.mlflow is not None:
        from export.hub.tracking import require_mlflow

        require_mlflow()  # before any trial: a missing package is bad input
    if data is None:
        from compress.models.loading import load_data

        data = load_data(recipe.data, search_dir)
    overrides = dict(objective=objective, batch_size=batch_size, max_drop=max_drop, budget_minutes=budget_minutes)
    spec = parse_search_spec(recipe.search, {**overrides, "prune_ratios": prune_ratios, "quantize": quantize})
    data = as_task_data(data)
    metric = evaluator or recipe.task.metric
    resolved = resolve_evaluator(metric, search_dir)
    local_join = join is not None and "://" not in join  # --join searches/x: a worker in that folder
    out = Path(out_dir or (join if local_join else Path("searches") / recipe.name))
    without_search = recipe.model_copy(update={"search": None})
    identity = {
        "run": run_identity(without_search, model, data),
        "metric": resolved.name,
        "batch_size": spec.batch_size,
        "export": recipe.export.model_dump(mode="json"),
        "measured_on": measured_on(recipe.report.threads),
    }
    runner = TrialRunner(model, without_search, data, resolved, metric, out, spec.batch_size, search_dir)
    if join is not None:
        return joined(runner, identity, join, force)
    ensure_writable(out)
    folder.lock(out)
    try:
        claim(out, identity, force)
        set_active_folder(out)
        with log.run_log(out):
            url = storage_url(storage, out)
            directions = ["minimize", "maximize" if resolved.higher_is_better else "minimize"]
            study = Study(url, identity, create=True, directions=directions, metric=resolved.name)
            space = build_space(model, recipe, spec, spec.max_drop * strategy.point_size(resolved.name))
            for line in space.describe():
                log.info(f"search: {line}")
            runner.guard = Guard(out)
            queue = Queue(study, runner, spec.objective, workers)
            given = {**overrides, "prune_ratios": prune_ratios, "quantize": quantize, "evaluator": evaluator}
            payload = source or ("objects", model, recipe, data, {**given, "search_dir": search_dir})
            with local_workers(study, workers, payload, url, out):
                return _search(runner, space, spec, identity, resolved.name, resolved.higher_is_better, queue)
    finally:
        folder.unlock(out)


@contextlib.contextmanager
def local_workers(study: Study, count: int, payload: tuple, url: str, out: Path):
    """``count`` - 1 worker processes beside this one, each with its share of the cores for torch's work
    (timing has them all: ``workers.Guard``); the study's status tells them when the search has ended."""
    threads = torch.get_num_threads()
    share = max(1, (os.cpu_count() or 1) // count)
    study.set("status", "running")
    study.set("workers", count)
    study.set("folder", folder_id(out))  # a worker joining in this folder shares its files and its timing lock
    processes = start_local(count - 1, payload, url, out, share) if count > 1 else []
    if processes:
        log.info(f"search: {count} workers on this machine (this process and {len(processes)} more)")
        torch.set_num_threads(share)
        wait_ready(study, processes)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        study.set("status", "ended")
        stop_local(processes)


def joined(runner: TrialRunner, identity: dict, storage: str, force: bool) -> int:
    """One more worker of a running search: in its folder, any task; in another folder (another machine),
    the cheap rungs' tasks, timed beside a baseline exported here. Returns how many trials it ran."""
    out = runner.out
    study = Study(storage_url(storage, out), identity, create=False)
    if study.get("folder") == folder_id(out):  # the search's own folder: its lock is the search's
        runner.guard = Guard(out)
        ran = work(study, runner, lambda task: True)
    else:
        ensure_writable(out)
        folder.lock(out)
        try:
            claim(out, identity, force)
            write_json_atomic(out / STATE, {"identity": identity, "status": "worker", "study": study.name})
            runner.guard = Guard(out)
            with log.quieted():
                baseline = runner.run([], None, {})["points"][0]["path"]  # the fp32 file its timings stand beside
            ran = work(study, runner, lambda task: task.get("local_to") is None, own_baseline=baseline)
        finally:
            folder.unlock(out)
    log.info(f"search: this worker ran {ran} trials of study {study.name}")
    return ran


def _search(
    runner: TrialRunner,
    space: Space,
    spec: SearchSpec,
    identity: dict,
    metric_name: str,
    higher_is_better: bool,
    queue: Queue,
) -> SearchResult:
    search = Search(runner, space, spec, metric_name, higher_is_better, queue)
    state = {"identity": identity, "spec": spec.model_dump(mode="json"), "space": space.describe()}
    write_json_atomic(runner.out / STATE, {**state, "status": "running"})
    if runner.data.validation is None:
        log.warn("search: the data has no validation split; the eval split chooses, so its figure is not held out")
    log.info(f"search: {search.reserve_text()}")
    search.trial([], None, "fp32 baseline", None)
    search.run_rungs()
    recipe = runner.recipe
    ended = {
        "stopped_by_budget": search.stopped_by_budget,
        "elapsed_seconds": round(search.elapsed(), 1),
        "metric": metric_name,
        "higher_is_better": higher_is_better,
        "workers": {"count": queue.workers, "processes": sorted({t["worker"] for t in search.trials if "worker" in t})},
        "study": {"name": queue.study.name, "storage": shown_url(queue.study.url)},
    }
    try:
        chosen, baseline = search.choose(search.final_timing())
    except NothingWithinBudget as exc:  # a result too: its report says why, with every trial
        summary = {**state, **ended, "status": "nothing chosen", "outcome": str(exc), "chosen": None}
        report_path = report.write_report(runner.out, summary, search.trials, spec)
        write_json_atomic(runner.out / STATE, summary)
        _track(runner, summary, search.trials)
        raise NothingWithinBudget(f"{exc}; report: {report_path}") from None
    baseline["validation_metric"] = search.reference(search.validation_total)
    chosen["eval_metric"] = runner.eval_metric(chosen["path"])
    baseline["eval_metric"] = runner.eval_metric(baseline["path"])
    chosen_trial = next(t for t in search.trials if t["key"] == chosen["trial"])
    recipe_path = report.write_recipe(runner.out, recipe, chosen_trial, chosen, runner.search_dir)
    summary = {
        **state,
        "status": "finished",
        **ended,
        "elapsed_seconds": round(search.elapsed(), 1),  # the final timing included
        "chosen": chosen,
        "baseline": baseline,
        "finalists": [
            {key: p[key] for key in ("label", "name", "validation_metric", "drop", "size_bytes", "trial")}
            | {"final": p["final"]}
            for p in search.timed_finalists
        ],
    }
    report_path = report.write_report(runner.out, summary, search.trials, spec)
    write_json_atomic(runner.out / STATE, summary)
    _track(runner, summary, search.trials)
    speedup = chosen["final"]["speedup"]
    log.info(
        f"[bold]search[/bold] chose {chosen['label']}: {metric_name} {chosen['validation_metric']:.4f} "
        f"on validation ({-chosen['drop'] + 0.0:+.2f} pt), {report.figure(chosen['eval_metric'])} on eval (fp32 "
        f"{report.figure(baseline['eval_metric'])}), {speedup:.2f}x faster than fp32 at batch {spec.batch_size}; "
        f"recipe: {recipe_path}; report: {report_path}"
    )
    return SearchResult(runner.out, chosen, baseline, recipe_path, report_path, search.trials)


def _track(runner: TrialRunner, summary: dict, trials: list[dict]) -> None:
    """The search in MLflow (``report.mlflow``): a parent run, a child run per trial."""
    spec = runner.recipe.report.mlflow
    if spec is None:
        return
    from export.hub.tracking import log_search

    try:
        run_id = log_search(runner.out, spec, runner.recipe.name, summary, trials)
    except Exception as exc:  # noqa: BLE001  (MLflow and its stores raise many types; the search's files stand)
        log.warn(f"report.mlflow: search not logged ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        return
    log.info(f"mlflow: search run {run_id} with {len(trials)} trial runs")


def search_recipe(source: str | Path, trust_checkpoint: bool = False, **options) -> SearchResult:
    """Load the recipe's model and data (factories, checkpoint) and ``run_search`` it (the CLI's path)."""
    from compress.models.loading import load_data, load_model

    recipe = load_recipe(source)
    model_spec = recipe.model
    if trust_checkpoint and model_spec is not None:
        # a consent for this command: the written recipe.yaml does not carry it
        model_spec = model_spec.model_copy(update={"trust_checkpoint": True})
    search_dir = Path(source).resolve().parent
    model = load_model(model_spec, search_dir)
    data = load_data(recipe.data, search_dir)
    # a worker process loads the recipe's model and data itself, with the same overrides
    given = {k: v for k, v in options.items() if k not in ("join", "workers", "storage", "out_dir", "force")}
    payload = ("recipe", str(source), trust_checkpoint, given)
    return run_search(model, recipe, data, search_dir=search_dir, source=payload, **options)
