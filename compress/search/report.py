"""What a search leaves: the chosen point's ``recipe.yaml``, ``report.md`` (the chosen point, the
Pareto fronts, every trial), the plots and the machine record (``environment.json``).

The fronts hold the points scored on the whole validation split, with the speed-up measured
beside the fp32 baseline in their trial; the chosen point's figures come from the final timing,
where the finalists and the baseline took turns.
"""

import copy
import datetime
import os
from pathlib import Path

import yaml

from compress.core.io import write_json_atomic, write_text_atomic
from compress.recipe.schema import Recipe
from compress.recipe.search_spec import SearchSpec
from compress.search import strategy
from compress.search.rungs import TIE_TOLERANCE
from compress.search.space import trial_recipe


def chosen_passes(trial: dict, chosen: dict) -> list[dict]:
    """The chosen trial's passes with its quantize pass asking for the chosen artifact only."""
    passes = copy.deepcopy(trial["passes"])
    quantize = next((p for p in passes if p["pass"] == "quantize"), None)
    if quantize is None:
        return passes
    if chosen["scheme"] != "none":
        quantize["onnx"] = [v for v in quantize["onnx"] if v["name"] == chosen["name"]]
    elif quantize.get("bitsandbytes"):
        quantize["onnx"] = []  # the torch side stays; no quantized ONNX artifact
    else:
        passes.remove(quantize)
    return passes


def figure(value: float | None) -> str:
    """A metric as the report prints it; None is a split the metric could not score."""
    return "not scorable" if value is None else f"{value:.4f}"


def local_modules_dir(recipe: Recipe, out: Path, search_dir: Path | None) -> Path | None:
    """The recipe's folder when its factories or metric are modules there, which ``modelpress run`` on a
    recipe.yaml in another folder would not find (it looks beside the recipe it reads)."""
    if search_dir is None or search_dir.resolve() == out.resolve():
        return None
    specs = [s.factory for s in (recipe.model, recipe.data) if s is not None and s.factory]
    specs += [recipe.task.metric] if ":" in str(recipe.task.metric) else []
    tops = {str(spec).partition(":")[0].split(".")[0] for spec in specs}
    local = any((search_dir / f"{top}.py").is_file() or (search_dir / top / "__init__.py").is_file() for top in tops)
    return search_dir if local else None


def write_recipe(out: Path, recipe: Recipe, trial: dict, chosen: dict, search_dir: Path | None = None) -> Path:
    """``recipe.yaml``: the recipe with the chosen point's passes; ``modelpress run`` reproduces the point."""
    document = trial_recipe(recipe, chosen_passes(trial, chosen), name=f"{recipe.name}-searched")
    modules = local_modules_dir(recipe, out, search_dir)
    reproduce = f"PYTHONPATH={modules} modelpress run recipe.yaml" if modules else "modelpress run recipe.yaml"
    header = (
        f"# Chosen by `modelpress search` ({datetime.date.today().isoformat()}): {chosen['label']} "
        f"(artifact {chosen['name']}).\n"
        f"# Validation {chosen['validation_metric']:.4f} ({_delta(chosen):+.2f} points vs fp32), eval "
        f"{figure(chosen['eval_metric'])}; {chosen['final']['speedup']:.2f}x faster than fp32 ONNX at batch "
        f"{chosen['final']['batch_size']} on {chosen['final']['device_name']}"
        f"{' (timed on a busy machine: unreliable, see report.md)' if chosen['final'].get('unreliable') else ''}.\n"
        f"# Reproduce: {reproduce}\n"
    )
    return write_text_atomic(out / "recipe.yaml", header + yaml.safe_dump(document, sort_keys=False))


def _delta(point: dict) -> float:
    """The point's change vs fp32 in points (+ is better); never printed as -0.00."""
    return -point["drop"] + 0.0


def _mb(size: int) -> str:
    return f"{size / 1e6:.3f}"


def _front_table(points: list[dict], objective: str, higher_is_better: bool) -> list[str]:
    lines = ["| point | validation | Δ vs fp32 (pt) | speed-up vs fp32 | size (MB) |", "|---|---|---|---|---|"]
    for p in strategy.front(points, objective, higher_is_better):
        lines.append(
            f"| {p['label']} | {p['validation_metric']:.4f} | {_delta(p):+.2f} | {p['speedup']:.2f}x "
            f"| {_mb(p['size_bytes'])} |"
        )
    return lines


def _point_text(p: dict) -> str:
    if p["status"] != "passed" or "speedup" not in p:
        return f"{p['name']}: {p.get('error', p['status'])}"
    figures = f"{_delta(p):+.2f}, {p['speedup']:.2f}x, {_mb(p['size_bytes'])}"
    return f"{p['name']}: {p['validation_metric']:.4f} ({figures})"


def _trial_rows(trials: list[dict]) -> list[str]:
    lines = [
        "| # | trial | validation batches | stages computed / reused | seconds | worker "
        "| points: metric (Δ vs fp32 pt, speed-up, MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, trial in enumerate(trials, 1):
        points = "; ".join(_point_text(p) for p in trial["points"])
        seconds = "resumed" if trial["resumed"] else f"{trial['seconds']:.1f}"
        complete = "all " if trial["validation_complete"] else ""
        lines.append(
            f"| {index} | {trial['label']} | {complete}{trial['validation_batches']} | {trial['stages_computed']} / "
            f"{trial['stages_reused']} | {seconds} | {trial.get('worker', '–')} | {points} |"
        )
    return lines


def _final_rows(finalists: list[dict], baseline: dict) -> list[str]:
    lines = ["| point | validation Δ (pt) | p50 (ms) | speed-up vs fp32 | cv |", "|---|---|---|---|---|"]
    base = baseline["final"]
    lines.append(f"| fp32 baseline | +0.00 | {base['p50_ms']:.3f} | 1.00x | {base['cv']:.2f} |")
    for p in finalists:
        final = p["final"]
        lines.append(
            f"| {p['label']} | {_delta(p):+.2f} | {final['p50_ms']:.3f} | {final['speedup']:.2f}x | {final['cv']:.2f} |"
        )
    return lines


def _timing_note(chosen: dict, baseline: dict) -> str:
    """The load the final timing ran under; figures taken beside other work are flagged."""
    loads = [x for e in (chosen, baseline) for x in (e.get("load_before"), e.get("load_after")) if x is not None]
    load = f"load per core {min(loads):.2f} to {max(loads):.2f}" if loads else "load not known on this OS"
    others = [e["other_cores"] for e in (chosen, baseline) if e.get("other_cores") is not None]
    if others:
        load += f" (this search's own threads included); other processes used {max(others):.2f} cores"
    if chosen.get("unreliable") or baseline.get("unreliable"):
        return (
            f"**Timing unreliable**: {load}, or the middle 80% of calls spread over more than half their median; "
            "other work on the machine slows the larger fp32 model the most, so speed-ups read high. Rerun on an "
            "idle machine."
        )
    return f"Timing: {load}; calls vary by {max(chosen.get('cv', 0), baseline.get('cv', 0)):.0%} of their mean at most."


def _plots(out: Path, points: list[dict], metric: str, higher_is_better: bool) -> list[str]:
    from export.report.plots import plot_front

    names = [p["label"] for p in points]
    ylabel = f"{metric} on validation (ONNX Runtime)"
    drawn = []
    plots = {
        "metric_vs_latency": ([1.0 / p["speedup"] for p in points], "latency relative to fp32 (lower is faster)"),
        "metric_vs_size": ([p["size_bytes"] / 1e6 for p in points], "size on disk, MB"),
    }
    for name, (costs, xlabel) in plots.items():
        path = out / "plots" / f"{name}.png"
        points_xy = list(zip(costs, [p["validation_metric"] for p in points]))
        if plot_front(points_xy, names, xlabel, ylabel, name, path, higher_is_better):
            drawn.append(f"![{name}](plots/{name}.png)")
    return drawn


def _workers_line(summary: dict, trials: list[dict]) -> str:
    """How many workers ran, on which machines (host/pid), and the study that holds every trial."""
    workers = summary.get("workers", {"count": 1, "processes": []})
    ran = sorted({t["worker"] for t in trials if not t["resumed"] and "worker" in t})
    hosts = sorted({name.split("/")[0] for name in ran})
    study = summary.get("study", {})
    return (
        f"- workers: {workers['count']} on this machine; trials run by {len(ran)} processes on "
        f"{', '.join(hosts) or 'no machine (all resumed)'} ({', '.join(ran) or '–'}); each trial's seconds and "
        f"worker are in the table below; study {study.get('name', '?')} in {study.get('storage', '?')}"
    )


def _chosen_section(summary: dict, spec: SearchSpec) -> list[str]:
    """The chosen point beside fp32, and the final timing of every finalist."""
    chosen, baseline, metric = summary["chosen"], summary["baseline"], summary["metric"]
    final = chosen["final"]
    return [
        "## Chosen point",
        "",
        f"| | {metric} validation | Δ (pt) | {metric} eval | p50 at batch {spec.batch_size} (ms) "
        "| speed-up | size (MB) |",
        "|---|---|---|---|---|---|---|",
        f"| fp32 baseline | {baseline['validation_metric']:.4f} | +0.00 | {figure(baseline['eval_metric'])} "
        f"| {baseline['final']['p50_ms']:.3f} | 1.00x | – |",
        f"| {chosen['label']} | {chosen['validation_metric']:.4f} | {_delta(chosen):+.2f} "
        f"| {figure(chosen['eval_metric'])} | {final['p50_ms']:.3f} | {final['speedup']:.2f}x "
        f"| {_mb(chosen['size_bytes'])} |",
        "",
        "Chosen on the validation split only; the eval split's figure is reported, never used to choose. "
        "The finalists and the fp32 baseline were timed together, taking turns. `modelpress run` on "
        "recipe.yaml reproduces the point (its header gives the command).",
        "",
        _timing_note(final, baseline["final"]),
        "",
        "## Final timing",
        "",
        f"Every finalist and the fp32 baseline, timed together at batch {spec.batch_size}, the rows taking turns; "
        f"within {TIE_TOLERANCE[spec.objective]:.0%} of the fastest, the better validation metric wins.",
        "",
        *_final_rows(summary.get("finalists", []), baseline),
    ]


def write_report(out: Path, summary: dict, trials: list[dict], spec: SearchSpec) -> Path:
    """report.md, the plots and environment.json of a search that ended: with a chosen point, or without
    one (``chosen`` None, ``outcome`` says why), so that every trial it ran is on record either way."""
    from export.measure.environment import collect_environment

    environment = {**collect_environment(), "load_average": list(os.getloadavg())}
    write_json_atomic(out / "environment.json", environment)
    chosen, metric = summary["chosen"], summary["metric"]
    higher = summary.get("higher_is_better", True)
    complete = [
        p for t in trials if t["validation_complete"] for p in t["points"] if p["status"] == "passed" and "speedup" in p
    ]
    timed = (
        f"ONNX Runtime {chosen['final']['provider']}, {chosen['final']['threads']} threads"
        if chosen
        else "ONNX Runtime"
    )
    computed = [t for t in trials if not t["resumed"]]
    outcome = _chosen_section(summary, spec) if chosen else ["## No point chosen", "", summary["outcome"] + "."]
    lines = [
        f"# modelpress search: {summary['identity']['run']['name']}",
        "",
        f"- objective: {spec.objective}"
        + (f" at batch {spec.batch_size} (p50, {timed})" if spec.objective == "latency" else " (ONNX file on disk)"),
        f"- budget: {spec.max_drop:g} point{'' if spec.max_drop == 1 else 's'} of {metric} below fp32 on the "
        "validation split"
        f" ({spec.max_drop * strategy.point_size(metric):g} in metric units)",
        f"- time: {summary['elapsed_seconds'] / 60:.1f} min of {spec.budget_minutes:g}"
        + (" (stopped by the time budget)" if summary["stopped_by_budget"] else ""),
        f"- trials: {len(trials)} ({len(computed)} run, {len(trials) - len(computed)} resumed); stages computed "
        f"{sum(t['stages_computed'] for t in computed)}, reused {sum(t['stages_reused'] for t in computed)}",
        _workers_line(summary, trials),
        f"- machine: {environment['cpu']}, {environment['usable_cores']} usable cores; load average "
        f"{', '.join(f'{x:.2f}' for x in environment['load_average'])} at the end. The choice holds for this "
        "machine: latency was measured here, not estimated, and may rank differently elsewhere",
        "",
        *outcome,
        "",
        "## Pareto front: metric vs latency",
        "",
        *_front_table(complete, "latency", higher),
        "",
        "## Pareto front: metric vs size",
        "",
        *_front_table(complete, "size", higher),
        "",
        *_plots(out, complete, metric, higher),
        "",
        "## Trials",
        "",
        "Speed-ups of a trial were timed beside the fp32 baseline in that trial, the rows taking turns.",
        "",
        *_trial_rows(trials),
        "",
    ]
    return write_text_atomic(out / "report.md", "\n".join(lines))
