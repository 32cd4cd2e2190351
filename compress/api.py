"""The public entry points: ``run`` (a module in, a result out) and the recipe-driven variants.

``run`` = pipeline (passes, per-stage metrics, resume) -> export (ONNX + parity)
-> report (metric in ONNX Runtime, latency, report.json/report.md).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.core import log
from compress.core.distributed import init_from_environment, is_main
from compress.core.errors import InputError, ModelpressError
from compress.core.io import link_duplicates, read_json, set_active_folder, write_json_atomic
from compress.engine import folder
from compress.engine.job import claimed, drop_stale_outputs, prepare_job
from compress.engine.metrics import weights_fingerprint
from compress.engine.pipeline import run_pipeline
from compress.engine.stages import StageResult, read_stages
from compress.models.evaluate import Evaluator, resolve_evaluator
from compress.models.loading import load_data, load_model
from compress.quant.bnb import float_copy
from compress.quant.fake_quant import float_twin
from compress.recipe.schema import Recipe, load_recipe


@dataclass
class CompressionResult:
    """What a run produced: the compressed module, every stage's metrics, the files written."""

    model: torch.nn.Module | None
    stages: list[StageResult]
    artifacts: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    report_path: Path | None = None

    @property
    def failures(self) -> list[str]:
        """One line per artifact whose export or parity check failed."""
        return [f"{a['name']}: {a.get('error', 'failed')}" for a in self.artifacts if a.get("status") != "passed"]

    @property
    def metrics(self) -> dict[str, float]:
        return {s.name: s.metric for s in self.stages}


def run(
    model: torch.nn.Module,
    recipe: Any,
    data: Any,
    *,
    example_inputs: Any = None,
    out_dir: str | Path | None = None,
    evaluator: Any = None,
    export: bool = True,
    report: bool = True,
    search_dir: Path | None = None,
    force: bool = False,
    inplace: bool = False,
) -> CompressionResult:
    """Compress ``model`` with ``recipe`` (YAML path, dict, Recipe, or list of pass configs).

    ``data`` is TaskData, a dict of splits, or an iterable of eval batches. The run folder
    (default ``runs/<recipe name>``) receives stages, ONNX artifacts and the report; rerunning
    into the same folder resumes after the last completed stage; a folder holding a run of another
    recipe (other name, model, data or task) is refused unless ``force``. The folder is locked while the
    run goes. ``model`` itself is left unchanged (the passes work on a copy) unless ``inplace``. Under
    torchrun every rank runs the passes (training ones with DDP) and rank 0 alone writes.
    """
    from export.quantize.variants import export_quantized  # onnx loads when a run starts, not on import
    from export.runfolder.artifacts import convert_to_ort, export_artifacts, measure_torch_sources
    from export.runfolder.evidence import store_evidence
    from export.runfolder.generation import write_generation_folders
    from export.runfolder.hub import write_hub_folder

    # From the recipe's validation on, every warning printed reaches the report (``collect_warnings``).
    with log.collect_warnings() as logged:
        init_from_environment()
        job = prepare_job(model, recipe, data, example_inputs, out_dir, evaluator, search_dir, inplace)
        recipe, data, evaluator, out = job.recipe, job.data, job.evaluator, job.out
        if report and recipe.report.mlflow is not None:
            from export.hub.tracking import require_mlflow

            require_mlflow()  # before any work: a missing package is bad input, not a lost run
        with claimed(job, force):
            result = run_pipeline(job.model, recipe, data, evaluator, job.example_inputs, out)
            outcome = CompressionResult(result.model, result.stages, out_dir=out)
            if is_main():
                drop_stale_outputs(out, len(recipe.passes))
            if not (export and recipe.export.enabled and is_main()):  # rank 0 alone exports and reports
                return outcome
            sources = _exported_sources(result, recipe)
            outcome.artifacts = export_artifacts(out, sources, recipe, evaluator, data, job.example_inputs)
            floats = {name: module for name, (module, _) in sources.items()}
            # What `modelpress report` re-measures from, without the data factory or any other code of the run.
            store_evidence(out, floats, evaluator, data, job.metric)
            variants = [spec for config in recipe.passes for spec in config.onnx_variants()]
            compressed, stage = sources["compressed"]
            outcome.artifacts += export_quantized(
                out, compressed, stage, variants, recipe, evaluator, data, job.example_inputs, result.model
            )
            outcome.artifacts = write_generation_folders(out, outcome.artifacts, floats, data.tokenizer)
            outcome.artifacts = write_hub_folder(
                out, outcome.artifacts, compressed, job.example_inputs, recipe, data.tokenizer
            )
            if recipe.export.ort_format:
                outcome.artifacts = convert_to_ort(out, recipe)
            # Files of equal bytes (baseline and compressed of a recipe that changed no weight, their
            # reference outputs) are stored once.
            link_duplicates(sorted(path for path in (out / "artifacts").rglob("*") if path.is_file()))
            if report:
                measure_torch_sources(out, _timed_sources(result, recipe), recipe, evaluator, data)
                outcome.report_path, outcome.artifacts = measure_and_report(out, recipe, evaluator, data, logged=logged)
            _write_manifest(out, recipe, result.baseline)
            if report and recipe.report.mlflow is not None:
                _track(out, recipe)
            return outcome


def _track(out: Path, recipe: Recipe) -> None:
    """Log the run to MLflow (``report.mlflow``); a store that cannot be reached costs the log, not the run."""
    from export.hub.tracking import log_run

    try:
        run_id = log_run(out, recipe.report.mlflow, read_json(out / "report.json"))
    except Exception as exc:  # noqa: BLE001  (MLflow and its stores raise many types; the run's files stand)
        log.warn(f"report.mlflow: not logged ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return
    log.info(f"mlflow: run {run_id}")


def _exported_sources(result, recipe: Recipe) -> dict[str, tuple[torch.nn.Module, str]]:
    """Artifact name -> (float module, stage it came from). bitsandbytes layers export as the float
    weights they hold, QAT layers without their fake quantization."""
    sources = {"compressed": (float_copy(float_twin(result.model)), result.stages[-1].name)}
    return {"baseline": (result.baseline, "baseline"), **sources} if recipe.export.baseline else sources


def _timed_sources(result, recipe: Recipe) -> dict[str, torch.nn.Module]:
    """The torch modules timed beside the artifacts (as they run in torch, bitsandbytes layers included)."""
    return {"compressed": result.model, **({"baseline": result.baseline} if recipe.export.baseline else {})}


def _write_manifest(out: Path, recipe: Recipe, baseline: torch.nn.Module) -> None:
    from export.measure.environment import collect_environment
    from export.report.manifest import build_manifest, write_manifest
    from export.runfolder.artifacts import read_artifacts

    versions = collect_environment()["versions"]
    manifest = build_manifest(
        out, recipe, read_stages(out), read_artifacts(out), weights_fingerprint(baseline), versions
    )
    log.info(f"manifest: {write_manifest(out, manifest)}")


def measure_and_report(
    out: Path,
    recipe: Recipe,
    evaluator: Evaluator,
    data: Any,
    unscored: str | None = None,
    logged: list[str] | None = None,
    run_warnings: list[str] | None = None,
):
    """Measure the run's artifacts in ONNX Runtime and write report.json / .md / .html (``unscored``:
    why the metric is not scored, e.g. custom metric code not trusted). ``logged``: the warnings printed
    so far (``log.collect_warnings``); ``run_warnings``: those of the run, when this re-measures it."""
    from export.measure.environment import collect_environment
    from export.report.build import build_report, write_report
    from export.runfolder.artifacts import measure_artifacts
    from export.runfolder.generation import measure_generation

    artifacts = measure_generation(out, recipe, measure_artifacts(out, recipe, evaluator, data, unscored))
    report = build_report(recipe, read_stages(out), artifacts, collect_environment(), logged or [], run_warnings)
    path = write_report(out, report)
    log.info(f"report: {path}, {path.with_suffix('.md')} and {path.with_suffix('.html')}")
    return path, artifacts


def run_recipe(
    source: str | Path | Recipe,
    out_dir: str | Path | None = None,
    export: bool = True,
    report: bool = True,
    force: bool = False,
    trust_checkpoint: bool = False,
):
    """Load the recipe's model and data (factories, checkpoint) and ``run`` it."""
    # Opened here, joined by ``run``'s: warnings of the recipe's validation and the factories reach the report.
    with log.collect_warnings():
        recipe = load_recipe(source)
        if trust_checkpoint and recipe.model is not None:
            recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"trust_checkpoint": True})})
        search_dir = Path(source).resolve().parent if isinstance(source, (str, Path)) else None
        model = load_model(recipe.model, search_dir)
        data = load_data(recipe.data, search_dir)
        return run(
            model, recipe, data, out_dir=out_dir, export=export, report=report, search_dir=search_dir, force=force
        )


def report_run(out_dir: str | Path, trust_run: bool = False) -> CompressionResult:
    """Re-measure the artifacts of an earlier run folder on this machine and rewrite its report.

    From the folder alone by default: the stored held-out sample scores a built-in metric, the stored
    torch outputs check parity, and no code named by the folder is imported. ``trust_run`` lets the
    recipe's data factory and custom metric be imported (only for folders you trust).
    """
    out = Path(out_dir)
    run_info = folder.read_run_folder(out)
    run_warnings = _run_warnings(out)  # read before anything is written: a refused report.json changes nothing
    with log.collect_warnings() as logged:
        recipe = load_recipe(out / "recipe.yaml")
        if not any((out / "artifacts").glob("*.json")):
            raise InputError(f"{out}: no exported artifacts; run 'modelpress export RECIPE --out {out}' first")
        from export.measure.benchmark import mark_stale
        from export.runfolder.artifacts import artifacts_dir, measure_torch_sources, read_artifacts
        from export.runfolder.evidence import StoredData, reverify
        from export.runfolder.integrity import verify_run_folder

        # Before anything is imported or measured: names stay inside the folder, files match the manifest.
        verify_run_folder(out)
        stored = StoredData(out)
        folder.lock(out)  # a run still writing this folder is not re-measured under its feet
        try:
            set_active_folder(out)
            with log.run_log(out):
                records = read_artifacts(out)
                reverify(out, records, stored, recipe)
                sources, torch_reason = _torch_sources(out, recipe, trust_run)
                for record in records:
                    # Every old figure is marked; those measured again below replace their marked rows.
                    mark_stale(record.get("latency", []), torch_reason)
                    write_json_atomic(artifacts_dir(out) / f"{record['name']}.json", record)
                evaluator, data, unscored = _remeasure_inputs(out, recipe, run_info, stored, trust_run)
                if sources:
                    measure_torch_sources(out, sources, recipe, evaluator, data)
                path, artifacts = measure_and_report(out, recipe, evaluator, data, unscored, logged, run_warnings)
        finally:
            folder.unlock(out)
    return CompressionResult(None, read_stages(out), artifacts, out, path)


def _run_warnings(out: Path) -> list[str]:
    """The warnings the run printed, as its report.json stored them: kept when the report is re-measured."""
    report = read_json(out / "report.json")
    summary = report.get("summary") if isinstance(report, dict) else None
    stored = summary.get("run_warnings") if isinstance(summary, dict) else None
    return [w for w in stored if isinstance(w, str)] if isinstance(stored, list) else []


def _torch_sources(out: Path, recipe: Recipe, trust_run: bool) -> tuple[dict[str, torch.nn.Module], str]:
    """The torch modules the artifacts came from, rebuilt to time them again (``compress.load``: it
    imports the recipe's model factory, so only with ``trust_run``), and why not when they cannot be."""
    if not trust_run:
        return {}, "torch rows not re-measured: rebuilding the torch model runs the run's code; pass --trust-run"
    if recipe.model is None:
        return {}, "torch rows not re-measured: the recipe names no model factory or checkpoint (a Python API run)"
    from compress.engine.reload import load

    try:
        sources = {"compressed": load(out, trust_code=True)}  # --trust-run is the caller's consent
        if recipe.export.baseline:
            sources["baseline"] = load(out, 0, trust_code=True)
    except ModelpressError as exc:
        log.warn(f"{out}: torch model not rebuilt: {str(exc).splitlines()[0]}", collect=False)  # in stale_reason
        return {}, f"torch rows not re-measured: the torch model was not rebuilt ({str(exc).splitlines()[0]})"
    return sources, "torch rows not re-measured on this machine (measured on another one)"


def _remeasure_inputs(out, recipe, run_info, stored, trust_run):
    """The evaluator and eval batches to re-measure with, and why the metric is not scored (or None)."""
    from compress.models.evaluate import EVALUATORS

    metric = str(stored.meta["metric"])
    if trust_run and recipe.data is not None:
        search_dir = Path(str(run_info["search_dir"])) if run_info.get("search_dir") else None
        return resolve_evaluator(recipe.task.metric, search_dir), load_data(recipe.data, search_dir), None
    # The .npz is data, never trusted to name code: only a built-in name is looked up.
    if stored.meta["builtin_metric"] and metric in EVALUATORS:
        return stored.evaluator(resolve_evaluator(metric)), stored, None
    if not trust_run and ":" in metric:
        reason = f"task.metric {metric} is code named by the run folder; pass --trust-run to import it"
    else:
        reason = f"metric {metric} is custom code and the recipe has no data section to score it on"
    log.warn(f"{out}: metric not re-measured: {reason}", collect=False)  # in every record's warnings
    return stored.evaluator(None), stored, reason
