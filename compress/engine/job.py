"""One run of ``compress.run`` before and around its steps: the recipe, data and evaluator resolved,
the model copied, the run folder claimed (locked, checked, recipe saved, ``run.log`` open) and
released, and ``run.json`` written. ``compress/api.py`` then reads as the steps themselves."""

import contextlib
import copy
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compress.core import log
from compress.core.distributed import is_main
from compress.core.errors import InputError, OutputError
from compress.core.io import ensure_writable, read_json, set_active_folder, write_json_atomic, write_text_atomic
from compress.engine import folder
from compress.engine.metrics import weights_fingerprint
from compress.models.data import TaskData, as_task_data, take_rows
from compress.models.evaluate import Evaluator, resolve_evaluator
from compress.recipe.schema import Recipe, load_recipe


@dataclass
class Job:
    """What a run works on, resolved once: ``metric`` is what scored it (a built-in name can be re-scored
    from stored arrays), ``identity`` what the folder must have been claimed by."""

    model: torch.nn.Module
    recipe: Recipe
    data: TaskData
    metric: Any
    evaluator: Evaluator
    example_inputs: Any
    out: Path
    identity: dict
    search_dir: Path | None


def prepare_job(model, recipe, data, example_inputs, out_dir, evaluator, search_dir: Path | None, inplace: bool) -> Job:
    """The recipe validated, the data and evaluator resolved, and ``model`` copied unless ``inplace``."""
    recipe = load_recipe(recipe)
    data = as_task_data(data)
    metric = evaluator or recipe.task.metric
    evaluator = resolve_evaluator(metric, search_dir)
    if example_inputs is None:
        example_inputs = _example_inputs(evaluator, data, recipe)
    identity = run_identity(recipe, model, data)
    if not inplace:
        try:
            model = copy.deepcopy(model)  # the caller's module keeps its weights, layers and mode
        except Exception as exc:  # noqa: BLE001  (a module holding uncopyable state: locks, handles)
            raise InputError(
                f"model: cannot be copied ({type(exc).__name__}: {exc}); pass inplace=True to let the passes "
                "change it in place"
            ) from None
    out = Path(out_dir or Path("runs") / recipe.name)
    return Job(model, recipe, data, metric, evaluator, example_inputs, out, identity, search_dir)


@contextlib.contextmanager
def claimed(job: Job, force: bool) -> Iterator[None]:
    """The run folder held for this job: locked and checked (rank 0), the recipe saved, everything
    printed (third-party output included) kept in ``run.log``; unlocked however the run ends, with
    ``run.json`` listing the files written when it ends well."""
    try:
        if is_main():
            _claim_folder(job.out, job.recipe, job.identity, force)
            set_active_folder(job.out)
            _save_recipe(job.out, job.recipe, job.identity, job.search_dir)
        with log.run_log(job.out):
            yield
        if is_main():
            write_run_info(job.out, job.recipe, job.identity, job.search_dir)
    finally:
        if is_main():
            folder.unlock(job.out)


def _example_inputs(evaluator: Evaluator, data: TaskData, recipe: Recipe) -> Any:
    # Two rows for a dynamic batch: torch.export specializes dimensions of size 1, which would fix the axis.
    rows = 2 if recipe.export.dynamic_batch else recipe.export.fixed_batch_size
    for batch in data.batches("eval"):
        return take_rows(evaluator.inputs_of(batch)[0], rows)
    raise InputError("task data: the eval split is empty; it must hold at least one batch")


def _claim_folder(out_dir: Path, recipe: Recipe, identity: dict, force: bool) -> None:
    """Lock the folder, then refuse one holding another run (other recipe or inputs) unless ``force``,
    which clears modelpress's own files there; files modelpress did not write are never touched."""
    ensure_writable(out_dir)
    folder.lock(out_dir)  # before --force: a folder in use is never cleared
    folder.check_layout(out_dir)  # no link among its folders: nothing below is written or removed outside
    folder.check_collisions(out_dir)
    previous = read_json(out_dir / "run.json")
    owner = previous.get("identity") if isinstance(previous, dict) else None
    if owner is None or owner == identity:
        return
    if not force:
        raise OutputError(
            f"{out_dir}: holds a run of recipe {owner.get('name') if isinstance(owner, dict) else owner!r} "
            "with other inputs (model/data/task); choose another --out folder, or pass --force to replace that run"
        )
    folder.remove_ours(out_dir, (*folder.FOLDERS, *folder.TOP_FILES))


def run_identity(recipe: Recipe, model: torch.nn.Module, data: TaskData) -> dict:
    """The recipe's identity; for an in-memory model (no model section) also its structure and initial
    weights, and the first eval batch, so two different models never share one run folder."""
    identity = recipe.identity()
    if recipe.model is None:
        digest = hashlib.sha256(weights_fingerprint(model).encode() + repr(model).encode())
        for batch in data.batches("eval"):
            digest.update(repr(batch).encode())  # torch's repr summarizes large tensors: bounded
            break
        identity = {**identity, "inputs": digest.hexdigest()}
    return identity


def _save_recipe(out_dir: Path, recipe: Recipe, identity: dict, search_dir: Path | None) -> None:
    import yaml

    write_text_atomic(out_dir / "recipe.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    write_run_info(out_dir, recipe, identity, search_dir)


def write_run_info(out_dir: Path, recipe: Recipe, identity: dict, search_dir: Path | None) -> None:
    run_info = {
        "recipe_sha256": recipe.sha256(),
        "identity": identity,
        "search_dir": str(search_dir or ""),
        "files": sorted({*folder.files_written(out_dir), "run.json"}),
    }
    write_json_atomic(out_dir / "run.json", run_info)


def drop_stale_outputs(out: Path, passes: int) -> None:
    """Stages past this recipe's last pass, and the artifacts and report every run rewrites, are removed:
    the report then lists exactly this run's stages and artifacts."""
    stale = [p.name for p in (out / "stages").glob("*") if p.name[:2].isdigit() and int(p.name[:2]) > passes]
    folder.remove_ours(out, (*(f"stages/{name}" for name in stale), *folder.OUTPUTS))
