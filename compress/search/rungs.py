"""The search's rungs: each trial run or resumed, the candidates promoted, the finalists refit and timed.

A ``Search`` holds one search's state: the space, the trial log, the trials done and the time
spent. Every trial's points are scored against the fp32 baseline's validation metric on the same
batches; the finalists are timed once more together, the rows taking turns, and the cheapest within
the budget is chosen (within timing noise, the better validation metric).
"""

import math
import time

from compress.core import log
from compress.core.errors import InputError, ModelpressError, OutputError, first_line
from compress.core.progress import progress
from compress.recipe.search_spec import SearchSpec
from compress.search import outcome, strategy, workers
from compress.search.space import Space
from compress.search.trials import TrialRunner, trial_key, validation_subset

MAX_FINALISTS = 8  # timed together at the end: bounded, as each row costs the report's timing budget
TIE_TOLERANCE = {"latency": 0.05, "size": 0.0}  # finalists this close to the best count as equally good
# The final timing decides between finalists a few percent apart, so it runs longer than a report's:
# at 100 calls and 10 s a row, two MiniLM finalists 6 to 19% apart swapped places on a 2-core VM;
# at 400 calls and 40 s, four timings in a row agreed.
FINAL_TIMING_FLOOR = {"iterations": 400, "max_seconds": 40.0}


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

    def __init__(
        self,
        runner: TrialRunner,
        space: Space,
        spec: SearchSpec,
        metric_name: str,
        higher_is_better: bool = True,
        queue: workers.Queue | None = None,
    ):
        self.runner, self.space, self.spec = runner, space, spec
        self.size = strategy.point_size(metric_name)
        self.higher_is_better = higher_is_better
        self.metric_name = metric_name
        self.queue = queue or _own_queue(runner, spec.objective, higher_is_better)
        self.records = self.queue.resumed()  # key -> record: the trials a rerun of this search skips
        self.trials: list[dict] = []
        self.references: dict[int, float] = {}
        self.start = time.perf_counter()
        self.stopped_by_budget = False
        self.baseline_size = float("inf")  # bytes of the fp32 ONNX file, once the baseline trial has run
        self.timed_finalists: list[dict] = []  # the final timing's rows, fastest first (``choose``)
        self.schemes = ({"none"} if space.keep_fp32 else set()) | {v["scheme"] for v in space.variants}
        self.scheme_of = {"compressed": "none", **{v["name"]: v["scheme"] for v in space.variants}}
        self.validation_total = validation_subset(runner.data, None)[1]

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def reference(self, batches: int) -> float:
        """The fp32 baseline's validation metric on the first ``batches`` batches."""
        if batches not in self.references:
            whole = batches >= self.validation_total
            subset = self.runner.validation(None if whole else batches)[0]
            try:
                self.references[batches] = self.runner.score_path(self.runner.baseline_path, subset)
            except InputError as exc:
                fix = (
                    "check the model's outputs and the validation data"
                    if whole
                    else "raise search.validation_batches, or shuffle the validation split once so that its first "
                    "batches are varied"
                )
                raise InputError(
                    f"search: the fp32 baseline cannot be scored on the first {batches} validation batches "
                    f"({first_line(exc)}); {fix}"
                ) from None
        return self.references[batches]

    def trial(
        self, passes: list[dict], batches: int | None, label: str, rung: int | None, refit: bool = False
    ) -> dict | None:
        """The trial's record: from the study when it finished before, else run now; None past the budget."""
        return self.run_trials([(passes, batches, label, rung, refit)])[0]

    def run_trials(self, requests: list[tuple]) -> list[dict | None]:
        """Each request's ``(passes, batches, label, rung, refit)`` record: resumed from the study, rescored from
        kept artifacts, or queued for the workers all at once; None from the first one past the budget."""
        plans, tasks = [], []
        for passes, batches, label, rung, refit in requests:
            effective = None if batches is None or batches >= self.validation_total else batches
            key = trial_key(passes, effective, self.runner.recipe.seed)
            plans.append((key, passes, effective, label, rung, refit))
            if key in self.records or self._earlier(passes) is not None or any(t["key"] == key for t in tasks):
                continue
            anywhere = bool(passes) and not refit and rung is not None and rung < len(self.space.fractions) - 1
            task = {"key": key, "passes": passes, "validation_batches": effective, "scheme_of": self.scheme_of}
            tasks.append(task | {"baseline": self.runner.baseline_path, "rung": rung, "label": label})
            task["local_to"] = None if anywhere else self.queue.here  # the finalists' files stay with the choice
        fit = self._admitted(tasks, plans[0][4], plans[0][5])
        if fit < len(tasks):
            self.stopped_by_budget = True
            log.warn(
                f"search: the time budget (--budget-minutes {self.spec.budget_minutes:g}) is spent: "
                f"{self.elapsed() / 60:.1f} min of trials, {self._final_timing_seconds() / 60:.1f} min kept for "
                "the final timing; no new trials"
            )
            stop = next(i for i, plan in enumerate(plans) if plan[0] == tasks[fit]["key"])
            plans, tasks = plans[:stop], tasks[:fit]
        fresh = {}
        if tasks:
            with progress(f"search: {len(tasks)} trial{'s' * (len(tasks) > 1)} ({tasks[0]['label']}, ...)"):
                fresh = self.queue.run(tasks)
        results = []
        for key, passes, effective, label, rung, refit in plans:
            earlier = None if key in self.records or key in fresh else self._earlier(passes)
            if earlier is not None:
                record = self.runner.rescore(earlier, effective)
                self.queue.study.add_record(record, workers.values(record, self.spec.objective))
            else:
                record = dict(fresh.get(key) or self.records[key])
            resumed = key not in fresh and earlier is None
            if not record.pop("crashed", False):
                self.records[key] = record
            results.append(self._finish(record, passes, label, rung, refit, resumed))
        return results + [None] * (len(requests) - len(results))

    def _earlier(self, passes: list[dict]) -> dict | None:
        """A trial of these passes run before in this search, with artifacts in this folder to rescore."""
        mine = (t for t in reversed(self.trials) if t["passes"] == passes and not t.get("remote"))
        return next((t for t in mine if self.points(t)), None)

    def _finish(self, record: dict, passes: list[dict], label: str, rung, refit: bool, resumed: bool) -> dict:
        """The record as this search reads it: its points scored against the baseline on the same batches,
        named by this search's labels, and appended to the trials."""
        record = {**record, "points": [dict(p) for p in record["points"]], "rung": rung, "refit": refit}
        record["resumed"] = resumed
        remote = bool(record.get("remote"))
        self._note_baseline(passes, record)
        self._refuse_empty_cut(passes, record)
        for point in record["points"]:
            if point["status"] == "passed":
                point["drop"] = strategy.drop(
                    point, self.reference(record["validation_batches"]), self.size, self.higher_is_better
                )
                point["remote"] = remote  # its files lie with another worker: ranked, never a finalist
        record = self._labelled(record, label, passes)
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

    def _refuse_empty_cut(self, passes: list[dict], record: dict) -> None:
        """A candidate whose ratios round to nothing at all on this model (a quarter of 2 heads, and no other
        cut) is the fp32 model distilled: its points fail rather than pass as a cut."""
        pruning = [p["pass"] for p in passes if p["pass"] in ("layer_drop", "structured_prune")]
        fp32 = next((p for p in record["points"] if p["name"] == "compressed" and "size_bytes" in p), None)
        if not pruning or fp32 is None or fp32["size_bytes"] < self.baseline_size:
            return
        error = f"{' and '.join(pruning)} removed nothing from this model: its ratios round to no block, head or neuron"
        log.warn(f"search: {error}; the candidate is left out")
        for point in record["points"]:
            point.update(status="failed", error=error)

    def _note_baseline(self, passes: list[dict], record: dict) -> None:
        """The trial without passes is the fp32 baseline: its file is the reference every trial is timed beside."""
        if not passes:
            fp32 = record["points"][0]
            if fp32["status"] != "passed":
                raise OutputError(f"search: the fp32 baseline did not export: {fp32.get('error', 'failed')}")
            self.runner.baseline_path = fp32["path"]
            self.baseline_size = fp32["size_bytes"]

    def _admitted(self, tasks: list[dict], rung: int | None, refit: bool) -> int:
        """How many of ``tasks`` fit the time budget: the time spent plus, per round of the workers, the mean
        of this rung's computed trials of its kind (a refit computes only quantization), or of all computed
        trials before one of them finished; the final timing kept free."""
        computed = [t for t in self.trials if not t["resumed"]]
        alike = [t["seconds"] for t in computed if (t.get("rung"), t.get("refit", False)) == (rung, refit)]
        done = alike or [t["seconds"] for t in computed]
        estimate = sum(done) / len(done) if done else 0.0
        left = self.spec.budget_minutes * 60 - self.elapsed() - self._final_timing_seconds()
        return workers.admitted(left, estimate, len(tasks), self.queue.workers) if left >= 0 else 0

    def final_timing(self) -> dict:
        """The last timing's settings: the report's, raised to ``FINAL_TIMING_FLOOR``."""
        report = self.runner.recipe.report
        return {
            "warmup": report.warmup,
            "iterations": max(report.iterations, FINAL_TIMING_FLOOR["iterations"]),
            "max_seconds": max(report.max_seconds, FINAL_TIMING_FLOOR["max_seconds"]),
        }

    def reserve_text(self) -> str:
        """What the final timing takes out of the budget, said before the first trial."""
        row = self._final_timing_seconds()  # no finalist yet: the baseline's row
        return (
            f"budget {self.spec.budget_minutes:g} min (--budget-minutes); the final timing takes {row:.0f} s a row "
            f"(the fp32 baseline and up to {MAX_FINALISTS} finalists), kept free from the start: {row:.0f} s now, "
            "one row more with each finalist"
        )

    def _final_timing_seconds(self) -> float:
        """What the last timing will take at most: every finalist and the baseline, its seconds each."""
        from export.measure.benchmark import ROUNDS, TURN_WARMUP_SECONDS

        rows = min(len(self.finalists()), MAX_FINALISTS) + 1
        return rows * (self.final_timing()["max_seconds"] + ROUNDS * TURN_WARMUP_SECONDS)

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
                if point["drop"] <= self.spec.max_drop + 1e-9 and not point.get("remote"):
                    found[point["path"]] = {**point, "trial": trial["key"]}
        return list(found.values())

    def best_so_far(self) -> dict | None:
        finalists = self.finalists()
        return min(finalists, key=lambda p: strategy.cost(p, self.spec.objective)) if finalists else None

    def _progress(self, trial: dict) -> str:
        figures = [
            f"{p['name']} {p['validation_metric']:.4f} ({-p['drop'] + 0.0:+.2f} pt, {p['speedup']:.2f}x)"
            for p in trial["points"]
            if p["status"] == "passed" and "speedup" in p
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
        # The safest (least compressed) first: a budget that runs out then leaves points that are likely
        # within --max-drop, rather than aggressive cuts that lose tens of points.
        candidates = sorted(self.space.candidates, key=lambda c: c.amount)
        last = len(self.space.fractions) - 1
        for rung in range(last):
            entries = self._run_rung(candidates, rung)
            if entries is None:
                return
            if rung == last - 1:
                self._run_finalists(entries, last)
                return
            allowed = self.spec.max_drop + self.spec.promote_slack
            candidates = strategy.promote(entries, allowed, self.spec.promote, self.spec.objective)
            log.info(f"search: rung {rung + 2}/{last + 1}: {'; '.join(c.label() for c in candidates)}")
        self._run_rung(candidates, last)  # one rung: every candidate is a finalist

    def _run_rung(self, candidates: list, rung: int) -> list[tuple] | None:
        """Each candidate's trial on ``rung`` (queued together: the workers run them at once):
        ``(candidate, points)``; None when the time budget is spent."""
        last = rung == len(self.space.fractions) - 1
        requests = []
        for candidate in candidates:
            passes = self.space.passes(candidate, rung)
            batches = None if last else self.spec.validation_batches
            requests.append((passes, batches, trial_label(candidate, passes), rung, False))
        trials = self.run_trials(requests)
        if any(trial is None for trial in trials):
            return None
        if last and any(self.refit_quantization(t) is None for t in trials):
            return None
        return [(candidate, self.points(trial)) for candidate, trial in zip(candidates, trials)]

    def _final_trial(self, candidate, rung: int) -> dict | None:
        """The candidate's whole distillation on all of validation, and its refit when one is needed."""
        passes = self.space.passes(candidate, rung)
        trial = self.trial(passes, None, trial_label(candidate, passes), rung)
        if trial is None or self.refit_quantization(trial) is None:
            return None
        return trial

    def _run_finalists(self, entries: list[tuple], rung: int) -> None:
        """The last rung, one finalist at a time: each tells how much the whole distillation wins back over
        the cheap rung, and the next is the cheapest candidate that this recovery would bring within budget."""
        places = max(1, math.ceil(len(entries) * self.spec.promote))
        remaining, recovered = list(entries), []
        for place in range(1, places + 1):
            pick = strategy.next_finalist(remaining, recovered, self.spec, places)
            if pick is None:
                won = f" with the {max(recovered):.2f} points the finalists won back" if recovered else ""
                log.info(f"search: no other candidate comes within the budget{won}; the last rung ends")
                return
            remaining.remove(pick)
            candidate, cheap = pick
            seen = f"; finalists so far won back up to {max(recovered):.2f} pt" if recovered else ""
            log.info(f"search: finalist {place}/{places}: {candidate.label()}{seen}")
            trial = self._final_trial(candidate, rung)
            if trial is None:
                return
            final = self.points(trial)  # the schemes that count, as ``cheap``
            if cheap and final:
                recovered.append(strategy.recovery(cheap, final))

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
            raise NothingWithinBudget(outcome.closest(self))
        rows = {f"{p['trial']}/{p['name']}": p for p in finalists}
        figures = self.runner.time_points(
            {"baseline": self.runner.baseline_path, **{k: p["path"] for k, p in rows.items()}}, timing
        )
        base_p50 = figures["baseline"]["p50_ms"]
        for key, point in rows.items():
            point["final"] = {**figures[key], "speedup": round(base_p50 / figures[key]["p50_ms"], 4)}
        objective = self.spec.objective
        by_final = {"latency": lambda p: 1.0 / p["final"]["speedup"], "size": lambda p: p["size_bytes"]}[objective]
        self.timed_finalists = sorted(rows.values(), key=by_final)
        fastest = min(by_final(p) for p in rows.values())
        # Within timing noise of the best (two distillation lengths of one architecture time alike), the
        # better validation metric wins, then the longer distillation: speed alone would pick by noise.
        tied = [p for p in rows.values() if by_final(p) <= fastest * (1 + TIE_TOLERANCE[objective])]
        chosen = max(tied, key=lambda p: (p["validation_metric"], self.rung_of[p["trial"]], -by_final(p)))
        if chosen["path"] == self.runner.baseline_path:
            raise NothingWithinBudget(outcome.nothing_beats_fp32(self))
        baseline = {"path": self.runner.baseline_path, "final": figures["baseline"]}
        return chosen, baseline


class NothingWithinBudget(ModelpressError):
    """The search found no point within the accuracy budget (a result, not bad input: exit status 1)."""

    exit_code = 1


def _own_queue(runner, objective: str, higher_is_better: bool) -> workers.Queue:
    """A search of one process (a caller without a driver: tests' fake runners): the folder's own study."""
    from compress.search.study import Study, default_url

    directions = ["minimize", "maximize" if higher_is_better else "minimize"]
    study = Study(default_url(runner.out), {"run": {"name": "search"}}, create=True, directions=directions)
    return workers.Queue(study, runner, objective)
