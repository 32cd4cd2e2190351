"""Trials: one ``compress.run`` of a candidate's passes, its artifacts scored and timed beside fp32.

Trials whose passes before distillation are alike run in one work folder (``work/<first
pass>-<digest of those passes>``), so the pipeline's stage fingerprints reuse the stages they
share: a candidate promoted to a longer distillation loads its cut model instead of cutting
again. Each finished trial is recorded in the search's Optuna study (``study``), and a rerun of
the same search skips every trial recorded there; ``check_record`` refuses a record read back
that this search did not write.

A trial's points are its passed artifacts (the fp32 ``compressed`` one and each quantized
variant), each scored in ONNX Runtime on the validation split (a bounded number of batches on
the cheap rungs) and timed at the search's batch size with the fp32 baseline, the rows taking
turns, so a speed-up is a ratio of two figures taken under the same load, and under the search's
``Guard``: no other worker of this machine trains or scores meanwhile.
"""

import hashlib
import itertools
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress.core import log
from compress.core.errors import InputError, first_line
from compress.core.untrusted import check_name, escape, inside, regular
from compress.models.data import TaskData
from compress.models.evaluate import Evaluator
from compress.recipe.schema import Recipe
from compress.search.space import trial_recipe
from compress.search.study import STUDY_FILE

# Timing of a trial's rows: enough calls for a stable median of small models, bounded for large ones.
TRIAL_TIMING = {"warmup": 5, "iterations": 60, "max_seconds": 2.0}
BASELINE_ROW = "fp32 baseline"


def trial_key(passes: list[dict], validation_batches: int | None, seed: int) -> str:
    """What makes two trials the same: passes, how much validation scores them, the seed."""
    body = json.dumps({"passes": passes, "validation_batches": validation_batches, "seed": seed}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def work_folder_name(passes: list[dict]) -> str:
    """Trials sharing the passes that shape the model (those before distillation) share a work folder,
    hence those stages: a finalist loads its cut model and distills it longer."""
    if not passes:
        return "baseline"
    shaping = list(itertools.takewhile(lambda p: p["pass"] != "distill", passes))
    digest = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:12]
    return f"{passes[0]['pass']}-{digest}"


_NUMBERS = ("validation_metric", "size_bytes", "p50_ms", "baseline_p50_ms", "speedup", "drop")


def check_record(record: object, folder: Path, number: int) -> None:
    """Refuse (one line) a record of the study unusable on resume: it was not written by this search."""
    problem = _malformed(record, folder)
    if problem:
        raise InputError(
            f"{escape(folder)}: trial {number} of the search's study: {escape(problem)}; it was not written by this "
            f"search: remove {STUDY_FILE} (its trials run again) or choose another --out folder"
        )


def _malformed(record: object, folder: Path) -> str | None:
    """What makes a record unusable on resume, or None: its points' files must be the search's own
    (``trials/<key>/<name>.onnx``, regular files), its figures numbers. A worker of another folder
    (``remote``) names no file: its figures rank candidates, its files are never read."""
    if not isinstance(record, dict) or not isinstance(record.get("key"), str) or not record["key"].isalnum():
        return "not a trial record (no key)"
    points = record.get("points")
    if not isinstance(points, list) or not isinstance(record.get("passes"), list):
        return "its passes or points are not lists"
    if not isinstance(record.get("validation_batches"), int) or not isinstance(record.get("validation_complete"), bool):
        return "its validation batches are not recorded"
    remote = record.get("remote", False)
    if remote is not False and (remote is not True or not record["passes"]):
        return "its remote flag is not one a worker writes (the baseline never runs in another folder)"
    for point in points:
        if not isinstance(point, dict) or not isinstance(point.get("status"), str):
            return "a point is not a record"
        try:
            check_name(point.get("name"), "point name", STUDY_FILE)
            if remote and "path" in point:
                return "a point of another worker's folder names a file"
            if point["status"] == "passed" and not remote:
                path = point.get("path")
                inside(folder, path, "point path")
                if not str(path).startswith("trials/") or regular(folder / path, "trial artifact") is None:
                    return f"point path {path!r} is not a file of this search's trials/"
        except InputError as exc:
            return str(exc).splitlines()[0]
        if any(not isinstance(point.get(k, 0), (int, float)) or isinstance(point.get(k), bool) for k in _NUMBERS):
            return f"point {point['name']} has figures that are not numbers"
    return None


def validation_subset(data: TaskData, batches: int | None) -> tuple[list, int, bool]:
    """The first ``batches`` validation batches (all when None), how many, and whether that is all of them.
    Only one batch more than asked for is read: a cheap rung never loads the whole split."""
    split = data.resolve("validation")
    if batches is None:
        every = list(data.batches(split))
        return every, len(every), True
    head = list(itertools.islice(data.batches(split), batches + 1))
    return head[:batches], min(len(head), batches), len(head) <= batches


def _keep(source: Path, target: Path) -> None:
    """Keep an artifact out of the work folder (the next trial there drops its artifacts): a hard link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


@dataclass
class TrialRunner:
    """Runs trials of one search: the model, recipe, data and metric stay; passes and rung change."""

    model: torch.nn.Module
    recipe: Recipe
    data: TaskData
    evaluator: Evaluator
    metric: Any  # what compress.run scores with: the recipe's metric name or the caller's evaluator
    out: Path
    batch_size: int
    search_dir: Path | None = None
    baseline_path: str | None = None  # the fp32 ONNX file every trial is timed beside (None: this is it)
    # A cheap rung's batches, read once: a shuffling loader would give every trial other samples.
    subsets: dict[int | None, tuple] = field(default_factory=dict, repr=False)
    guard: Any = None  # ``workers.Guard`` of the search folder: timing waits for other workers' work

    @property
    def lock(self):
        from compress.search.workers import NoGuard

        return self.guard or NoGuard()

    def validation(self, batches: int | None) -> tuple[list, int, bool]:
        """``validation_subset``, the same batches for every trial (the whole split is read afresh)."""
        if batches is None:
            return validation_subset(self.data, None)
        if batches not in self.subsets:
            self.subsets[batches] = validation_subset(self.data, batches)
        return self.subsets[batches]

    def run(self, passes: list[dict], validation_batches: int | None, scheme_of: dict[str, str]) -> dict:
        """Run ``passes`` (resuming shared stages), score and time the artifacts; the trial's record."""
        from compress.api import run

        start = time.perf_counter()
        key = trial_key(passes, validation_batches, self.recipe.seed)
        document = trial_recipe(self.recipe, passes)
        # The search times the artifacts itself; the fp32 baseline is the trial without passes.
        document["export"] = {**document["export"], "baseline": False, "ort_format": False}
        work = self.out / "work" / work_folder_name(passes)
        with self.lock.working():
            with log.quieted():
                result = run(
                    self.model,
                    document,
                    self.data,
                    out_dir=work,
                    evaluator=self.metric,
                    report=False,
                    search_dir=self.search_dir,
                )
            points = []
            for artifact in result.artifacts:
                point = {"name": artifact["name"], "scheme": scheme_of.get(artifact["name"], "none")}
                point["status"] = artifact.get("status", "failed")
                if point["status"] != "passed":
                    point["error"] = artifact.get("error", "failed")
                    points.append(point)
                    continue
                kept = self.out / "trials" / key / f"{artifact['name']}.onnx"
                _keep(work / artifact["path"], kept)
                external = (work / artifact["path"]).with_name(Path(artifact["path"]).name + ".data")
                if external.is_file():
                    _keep(external, kept.with_name(kept.name + ".data"))
                point.update(path=str(kept.relative_to(self.out)), size_bytes=artifact["size_bytes"])
                points.append(point)
            batches, used, complete = self.validation(validation_batches)
            self.score(points, batches)
        self.time_beside_baseline(points)
        return {
            "key": key,
            "passes": passes,
            "validation_batches": used,
            "validation_complete": complete,
            "points": points,
            "stages_computed": sum(not s.resumed for s in result.stages),
            "stages_reused": sum(s.resumed for s in result.stages),
            "seconds": round(time.perf_counter() - start, 2),
        }

    def rescore(self, previous: dict, validation_batches: int | None) -> dict:
        """A trial whose passes ran before, scored on more validation batches: its artifacts are
        kept, so nothing is run or exported again (a candidate without distillation on a later rung)."""
        start = time.perf_counter()
        points = [dict(p) for p in previous["points"]]
        batches, used, complete = self.validation(validation_batches)
        self.score(points, batches)
        key = trial_key(previous["passes"], validation_batches, self.recipe.seed)
        return {
            **previous,
            "key": key,
            "points": points,
            "validation_batches": used,
            "validation_complete": complete,
            "stages_computed": 0,
            "stages_reused": 0,
            "rescored_from": previous["key"],
            "seconds": round(time.perf_counter() - start, 2),
        }

    def score(self, points: list[dict], batches: list) -> None:
        """The metric of every passed point, in ONNX Runtime, on ``batches``; a point the metric cannot
        score (NaN outputs of a 4-bit artifact) fails alone, and the trial's other points count."""
        for point in points:
            if point["status"] != "passed":
                continue
            try:
                point["validation_metric"] = self.score_path(point["path"], batches)
            except InputError as exc:
                point.update(status="failed", error=first_line(exc))
                log.warn(f"search: {point['name']} not scored: {first_line(exc)}")

    def score_path(self, path: str, batches) -> float:
        """The metric of one ONNX file of the search folder, in ONNX Runtime, on ``batches``."""
        from export.onnx.runtime import ort_predictor
        from export.onnx.untrusted import checked_session  # a resumed point's file is checked like any other

        return self.evaluator.score(ort_predictor(checked_session(self.out / path, self.threads)), batches)

    def time_beside_baseline(self, points: list[dict]) -> None:
        """Each passed point's p50 at the search's batch size and its speed-up over fp32, timed together."""
        passed = {p["name"]: p["path"] for p in points if p["status"] == "passed"}
        if not passed:
            return
        rows = {BASELINE_ROW: self.baseline_path, **passed} if self.baseline_path else passed
        figures = self.time_points(rows, TRIAL_TIMING)
        for point in points:
            if point["name"] in passed:
                p50 = figures[point["name"]]["p50_ms"]
                base = figures[BASELINE_ROW]["p50_ms"] if self.baseline_path else p50
                point.update(p50_ms=p50, baseline_p50_ms=base, speedup=round(base / p50, 4))

    @property
    def threads(self) -> int:
        from export.onnx.runtime import default_threads

        return self.recipe.report.threads or default_threads()

    def time_points(self, paths: dict[str, Path], timing: dict[str, float]) -> dict[str, dict]:
        """p50 latency of each ONNX file at the search's batch size, the rows taking turns."""
        from export.measure.benchmark import benchmark_sessions
        from export.onnx.untrusted import checked_session
        from export.runfolder.artifacts import heldout_inputs

        sample = next(heldout_inputs(self.evaluator, self.data))
        sessions = {name: checked_session(self.out / path, self.threads) for name, path in paths.items()}
        with self.lock.timing():  # the cores to this timing alone: no other worker of the machine works
            figures = benchmark_sessions(sessions, sample, [self.batch_size], self.threads, **timing)
        return {name: entries[0].to_dict() for name, entries in figures.items()}

    def eval_metric(self, path: str) -> float | None:
        """The metric of one artifact on the eval split: reported for the chosen point, never used to choose
        (so a split the metric cannot score, constant labels say, is reported as such, not fatal)."""
        try:
            return self.score_path(path, self.data.batches("eval"))
        except InputError as exc:
            log.warn(f"search: {path} not scored on the eval split: {first_line(exc)}")
            return None
