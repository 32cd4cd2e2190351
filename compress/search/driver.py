"""The search: claim the folder (``search_folder``), build the space, run the rungs, choose.

The fp32 baseline is the first trial (the recipe without passes): its ONNX file is timed beside
every trial's artifacts, and its validation metric is the reference of the budget. The chosen
point is the cheapest finalist within ``max_drop`` points on the validation split, timed once more
with every other finalist and the baseline, the rows taking turns; the eval split's figure is
reported for it, never used to choose.
"""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from compress import folder, log
from compress.api import run_identity
from compress.data import as_task_data
from compress.errors import ModelpressError, OutputError, first_line
from compress.evaluate import resolve_evaluator
from compress.io import ensure_writable, set_active_folder, write_json_atomic
from compress.recipe import Recipe, load_recipe
from compress.search import report, strategy
from compress.search.search_folder import STATE, claim
from compress.search.space import Space, build_space
from compress.search.spec import SearchSpec, parse_search_spec
from compress.search.trials import TrialLog, TrialRunner, trial_key, validation_subset

MAX_FINALISTS = 8  # timed together at the end: bounded, as each row costs the report's timing budget
TIE_TOLERANCE = {"latency": 0.05, "size": 0.0}  # finalists this close to the best count as equally good


@dataclass
class SearchResult:
    """The outcome: the chosen point (and the fp32 baseline) with their figures, and the files written."""

    out_dir: Path
    chosen: dict
    baseline: dict
    recipe_path: Path
    report_path: Path
    trials: list[dict] = field(default_factory=list)


def trial_label(candidate, passes: list[dict]) -> str:
    """``prune 0.5, distill 3 epochs`` (``or 110 steps``): the candidate and its rung's distillation length."""
    distill = next((p for p in passes if p["pass"] == "distill"), None)
    if distill is None:
        return candidate.label()
    length = f"{distill['epochs']} epochs"
    if distill.get("max_steps"):
        length += f" or {distill['max_steps']} steps"  # whichever ends first
    return f"{candidate.label()}, distill {length}"


class Search:
    """One search's state: the space, the trial log, the trials done and the time spent."""

    def __init__(self, runner: TrialRunner, space: Space, spec: SearchSpec, metric_name: str):
        self.runner, self.space, self.spec = runner, space, spec
        self.size = strategy.point_size(metric_name)
        self.metric_name = metric_name
        self.log = TrialLog(runner.out)
        self.trials: list[dict] = []
        self.references: dict[int, float] = {}
        self.start = time.perf_counter()
        self.stopped_by_budget = False
        self.schemes = ({"none"} if space.keep_fp32 else set()) | {v["scheme"] for v in space.variants}
        self.scheme_of = {"compressed": "none", **{v["name"]: v["scheme"] for v in space.variants}}
        self.validation_total = validation_subset(runner.data, None)[1]

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def reference(self, batches: int) -> float:
        """The fp32 baseline's validation metric on the first ``batches`` batches."""
        if batches not in self.references:
            subset = validation_subset(self.runner.data, batches)[0]
            self.references[batches] = self.runner.score_path(self.runner.baseline_path, subset)
        return self.references[batches]

    def trial(
        self, passes: list[dict], batches: int | None, label: str, rung: int | None, refit: bool = False
    ) -> dict | None:
        """The trial's record: from trials.jsonl when it finished before, else run now; None past the budget."""
        effective = None if batches is None or batches >= self.validation_total else batches
        record = self.log.get(trial_key(passes, effective, self.runner.recipe.seed))
        if record is None:
            if not self._time_left(rung, refit):
                self.stopped_by_budget = True
                log.warn(f"search: the time budget ({self.spec.budget_minutes:g} min) is spent; no new trials")
                return None
            earlier = next((t for t in reversed(self.trials) if t["passes"] == passes), None)
            if earlier is not None:
                record = self.runner.rescore(earlier, effective)
            else:
                record = self._run(passes, effective)
            record.update(rung=rung, refit=refit, resumed=False)
            self._note_baseline(passes, record)
            for point in record["points"]:
                if point["status"] == "passed":
                    point["drop"] = strategy.drop(point, self.reference(record["validation_batches"]), self.size)
            self.log.add(self._labelled(record, label, passes))
        else:
            points = [dict(point) for point in record["points"]]  # trials.jsonl's copy keeps its own labels
            record = self._labelled({**record, "points": points, "resumed": True}, label, passes)
            self._note_baseline(passes, record)
        self.trials.append(record)
        log.info(self._progress(record))
        return record

    @staticmethod
    def _labelled(record: dict, label: str, passes: list[dict]) -> dict:
        """The record and its points named by this search's labels (a resumed record too: labels may change)."""
        record["label"] = label
        for point in record["points"]:
            point["label"] = strategy.point_label(label, point["name"], bool(passes))
        return record

    def _run(self, passes: list[dict], batches: int | None) -> dict:
        """Run a trial; a candidate the passes refuse (a ratio a model cannot take) is recorded as failed."""
        try:
            return self.runner.run(passes, batches, self.scheme_of)
        except ModelpressError as exc:
            if not passes:
                raise
            log.warn(f"search: trial failed: {first_line(exc)}")
            key = trial_key(passes, batches, self.runner.recipe.seed)
            return {
                "key": key,
                "passes": passes,
                "validation_batches": 0,
                "validation_complete": False,
                "points": [{"name": "compressed", "scheme": "none", "status": "failed", "error": first_line(exc)}],
                "stages_computed": 0,
                "stages_reused": 0,
                "seconds": 0.0,
            }

    def _note_baseline(self, passes: list[dict], record: dict) -> None:
        """The trial without passes is the fp32 baseline: its file is the reference every trial is timed beside."""
        if not passes:
            fp32 = record["points"][0]
            if fp32["status"] != "passed":
                raise OutputError(f"search: the fp32 baseline did not export: {fp32.get('error', 'failed')}")
            self.runner.baseline_path = fp32["path"]

    def _time_left(self, rung: int | None, refit: bool) -> bool:
        """Whether another trial fits: the time spent plus the mean of this rung's computed trials of its
        kind (a refit computes only quantization), or of all computed trials before one of them finished."""
        computed = [t for t in self.trials if not t["resumed"]]
        alike = [t["seconds"] for t in computed if (t.get("rung"), t.get("refit", False)) == (rung, refit)]
        done = alike or [t["seconds"] for t in computed]
        estimate = sum(done) / len(done) if done else 0.0
        return self.elapsed() + estimate + self._final_timing_seconds() <= self.spec.budget_minutes * 60

    def _final_timing_seconds(self) -> float:
        """What the last timing will take: every finalist and the baseline, the report's seconds each."""
        from export.benchmark import ROUNDS, TURN_WARMUP_SECONDS

        rows = min(len(self.finalists()), MAX_FINALISTS) + 1
        return rows * (self.runner.recipe.report.max_seconds + ROUNDS * TURN_WARMUP_SECONDS)

    def points(self, trial: dict) -> list[dict]:
        return strategy.scored(trial["points"], self.schemes)

    @property
    def rung_of(self) -> dict[str, int]:
        return {t["key"]: -1 if t.get("rung") is None else t["rung"] for t in self.trials}

    def finalists(self) -> list[dict]:
        """Points scored on the whole validation split and within the budget, each with its trial."""
        found = {}
        for trial in self.trials:
            for point in self.points(trial) if trial["validation_complete"] else []:
                if point["drop"] <= self.spec.max_drop + 1e-9:
                    found[point["path"]] = {**point, "trial": trial["key"]}
        return list(found.values())

    def _closest(self) -> str:
        scored = [p for trial in self.trials if trial["validation_complete"] for p in self.points(trial)]
        if not scored:
            return (
                f"search: no trial was scored on the whole validation split within {self.spec.budget_minutes:g} "
                "minutes; raise --budget-minutes"
            )
        closest = min(scored, key=lambda p: p["drop"])
        return (
            f"search: no point is within --max-drop {self.spec.max_drop:g}: the closest, {closest['name']}, loses "
            f"{closest['drop']:.2f} points; raise --max-drop, or add none to --quantize so that the fp32 points count"
        )

    def best_so_far(self) -> dict | None:
        finalists = self.finalists()
        return min(finalists, key=lambda p: strategy.cost(p, self.spec.objective)) if finalists else None

    def _progress(self, trial: dict) -> str:
        figures = [
            f"{p['name']} {p['validation_metric']:.4f} ({-p['drop'] + 0.0:+.2f} pt, {p['speedup']:.2f}x)"
            for p in trial["points"]
            if "speedup" in p
        ]
        best = self.best_so_far()
        best_text = f"{best['label']} {best['speedup']:.2f}x" if best else "none yet"
        origin = "resumed" if trial["resumed"] else f"{trial['seconds']:.0f} s"
        return (
            f"[bold]search[/bold] trial {len(self.trials)} ({trial['label']}, {origin}, stages computed "
            f"{trial['stages_computed']}, reused {trial['stages_reused']}): {'; '.join(figures) or 'no artifact'}"
            f" | best so far: {best_text} | {self.elapsed() / 60:.1f} min"
        )

    def run_rungs(self) -> None:
        # The most compressed first: the objective prefers them, and a time budget that runs out
        # then cuts the candidates least likely to win.
        candidates = sorted(self.space.candidates, key=lambda c: -c.amount)
        rungs = len(self.space.fractions)
        for rung in range(rungs):
            last = rung == rungs - 1
            batches = None if last else self.spec.validation_batches
            entries, rung_trials = [], []
            for candidate in candidates:
                passes = self.space.passes(candidate, rung)
                trial = self.trial(passes, batches, trial_label(candidate, passes), rung)
                if trial is None:
                    return
                entries.append((candidate, self.points(trial)))
                rung_trials.append(trial)
            if not last:
                allowed = self.spec.max_drop + self.spec.promote_slack
                candidates = strategy.promote(entries, allowed, self.spec.promote, self.spec.objective)
                log.info(f"search: rung {rung + 2}/{rungs}: {'; '.join(c.label() for c in candidates)}")
        for trial in rung_trials:  # the finalists
            if self.refit_quantization(trial) is None:
                return

    def refit_quantization(self, trial: dict) -> dict | None:
        """A finalist whose fp32 point is within the budget and a quantized point is not: quantized again
        with the room left (``max_drop`` less the fp32 point's drop) as the quantize pass's budget, so the
        per-layer float fallback keeps float the layers whose quantization costs most. Only the quantize stage is
        computed; the cut and distilled stages are loaded. Returns the new trial, ``trial`` when none is
        needed, None when the time budget is spent."""
        passes = trial["passes"]
        fp32 = next((p for p in trial["points"] if p["name"] == "compressed" and "drop" in p), None)
        over = [p for p in self.points(trial) if p["scheme"] != "none" and p["drop"] > self.spec.max_drop + 1e-9]
        if not passes or passes[-1]["pass"] != "quantize" or fp32 is None or not over:
            return trial
        if fp32["drop"] >= self.spec.max_drop:
            return trial  # no room left: float fallback cannot bring a quantized point under the fp32 one
        room = self.spec.max_drop - fp32["drop"]  # points
        refit = [*passes[:-1], {**passes[-1], "max_metric_drop": round(room * self.size, 6)}]
        label = f"{trial['label']}, quantized within {room:.2f} pt"
        return self.trial(refit, None, label, trial.get("rung"), refit=True)

    def choose(self, timing: dict) -> tuple[dict, dict]:
        """The finalists timed together with the baseline; the cheapest one, and the baseline's figures."""
        finalists = sorted(self.finalists(), key=lambda p: strategy.cost(p, self.spec.objective))[:MAX_FINALISTS]
        if not finalists:
            raise NothingWithinBudget(self._closest())
        rows = {f"{p['trial']}/{p['name']}": p for p in finalists}
        figures = self.runner.time_points(
            {"baseline": self.runner.baseline_path, **{k: p["path"] for k, p in rows.items()}}, timing
        )
        base_p50 = figures["baseline"]["p50_ms"]
        for key, point in rows.items():
            point["final"] = {**figures[key], "speedup": round(base_p50 / figures[key]["p50_ms"], 4)}
        objective = self.spec.objective
        by_final = {"latency": lambda p: 1.0 / p["final"]["speedup"], "size": lambda p: p["size_bytes"]}[objective]
        fastest = min(by_final(p) for p in rows.values())
        # Within timing noise of the best (two distillation lengths of one architecture time alike), the
        # better validation metric wins, then the longer distillation: speed alone would pick by noise.
        tied = [p for p in rows.values() if by_final(p) <= fastest * (1 + TIE_TOLERANCE[objective])]
        chosen = max(tied, key=lambda p: (p["validation_metric"], self.rung_of[p["trial"]], -by_final(p)))
        baseline = {"path": self.runner.baseline_path, "final": figures["baseline"]}
        return chosen, baseline


class NothingWithinBudget(ModelpressError):
    """The search found no point within the accuracy budget (a result, not bad input: exit status 1)."""

    exit_code = 1


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
) -> SearchResult:
    """Search the passes of ``recipe`` (a path, dict or Recipe; None: defaults) for ``model`` on ``data``.

    The keyword options override the recipe's ``search`` section (see ``SearchSpec``); ``max_drop``
    is in points (0.5 = half a point of accuracy). The search folder (default ``searches/<recipe
    name>``) receives trials.jsonl, report.md, plots and the chosen point's recipe.yaml; rerunning
    the same search into it skips the trials it finished.
    """
    recipe: Recipe = load_recipe(recipe if recipe is not None else {})
    if data is None:
        from compress.loading import load_data

        data = load_data(recipe.data, search_dir)
    overrides = dict(objective=objective, batch_size=batch_size, max_drop=max_drop, budget_minutes=budget_minutes)
    spec = parse_search_spec(recipe.search, {**overrides, "prune_ratios": prune_ratios, "quantize": quantize})
    data = as_task_data(data)
    metric = evaluator or recipe.task.metric
    resolved = resolve_evaluator(metric, search_dir)
    out = Path(out_dir or Path("searches") / recipe.name)
    without_search = recipe.model_copy(update={"search": None})
    identity = {
        "run": run_identity(without_search, model, data),
        "metric": resolved.name,
        "batch_size": spec.batch_size,
        "export": recipe.export.model_dump(mode="json"),
    }
    ensure_writable(out)
    folder.lock(out)
    try:
        claim(out, identity, force)
        set_active_folder(out)
        with log.run_log(out):
            space = build_space(model, recipe, spec, spec.max_drop * strategy.point_size(resolved.name))
            for line in space.describe():
                log.info(f"search: {line}")
            runner = TrialRunner(model, without_search, data, resolved, metric, out, spec.batch_size, search_dir)
            return _search(runner, space, spec, identity, resolved.name)
    finally:
        folder.unlock(out)


def _search(runner: TrialRunner, space: Space, spec: SearchSpec, identity: dict, metric_name: str) -> SearchResult:
    search = Search(runner, space, spec, metric_name)
    state = {"identity": identity, "spec": spec.model_dump(mode="json"), "space": space.describe()}
    write_json_atomic(runner.out / STATE, {**state, "status": "running"})
    if runner.data.validation is None:
        log.warn("search: the data has no validation split; the eval split chooses, so its figure is not held out")
    search.trial([], None, "fp32 baseline", None)
    search.run_rungs()
    recipe = runner.recipe
    timing = {"warmup": recipe.report.warmup, "iterations": recipe.report.iterations}
    chosen, baseline = search.choose({**timing, "max_seconds": recipe.report.max_seconds})
    baseline["validation_metric"] = search.reference(search.validation_total)
    chosen["eval_metric"] = runner.eval_metric(chosen["path"])
    baseline["eval_metric"] = runner.eval_metric(baseline["path"])
    chosen_trial = next(t for t in search.trials if t["key"] == chosen["trial"])
    recipe_path = report.write_recipe(runner.out, recipe, space, chosen_trial, chosen)
    summary = {
        **state,
        "status": "finished",
        "stopped_by_budget": search.stopped_by_budget,
        "elapsed_seconds": round(search.elapsed(), 1),
        "metric": metric_name,
        "chosen": chosen,
        "baseline": baseline,
    }
    report_path = report.write_report(runner.out, summary, search.trials, spec)
    write_json_atomic(runner.out / STATE, summary)
    speedup = chosen["final"]["speedup"]
    log.info(
        f"[bold]search[/bold] chose {chosen['label']}: {metric_name} {chosen['validation_metric']:.4f} "
        f"on validation ({-chosen['drop'] + 0.0:+.2f} pt), {chosen['eval_metric']:.4f} on eval (fp32 "
        f"{baseline['eval_metric']:.4f}), {speedup:.2f}x faster than fp32 at batch {spec.batch_size}; "
        f"recipe: {recipe_path}; report: {report_path}"
    )
    return SearchResult(runner.out, chosen, baseline, recipe_path, report_path, search.trials)


def search_recipe(source: str | Path, trust_checkpoint: bool = False, **options) -> SearchResult:
    """Load the recipe's model and data (factories, checkpoint) and ``run_search`` it (the CLI's path)."""
    from compress.loading import load_data, load_model

    recipe = load_recipe(source)
    if trust_checkpoint and recipe.model is not None:
        recipe = recipe.model_copy(update={"model": recipe.model.model_copy(update={"trust_checkpoint": True})})
    search_dir = Path(source).resolve().parent
    model = load_model(recipe.model, search_dir)
    data = load_data(recipe.data, search_dir)
    return run_search(model, recipe, data, search_dir=search_dir, **options)
