"""The report's data model: ``report.json``, from which ``report.md`` and ``report.html`` are rendered.

The JSON layout is versioned by ``schema``, documented in ``reports/README.md`` and checked
against ``export/report/report.schema.json``. Ratios compare each artifact with the baseline artifact
measured in the same run, so they stay meaningful on a noisy, shared machine.
"""

import datetime
from pathlib import Path
from typing import Any

from compress.core.io import write_json_atomic, write_text_atomic
from compress.engine.stages import StageResult
from compress.models.evaluate import metric_loss
from compress.recipe.schema import Recipe
from export.report.model_card import write_model_cards
from export.report.plots import write_plots
from export.report.render import render_html, render_markdown
from export.report.summary import headline_latency, higher_is_better, unreliable

SCHEMA = "modelpress.report/2"
SCHEMA_FILE = Path(__file__).with_name("report.schema.json")
METHOD = (
    "per batch size: {warmup} warm-up runs per artifact, then up to {iterations} timed runs "
    "or {max_seconds} s per artifact; ONNX Runtime artifacts take turns in 10 rounds so that "
    "machine load hits all of them alike, each turn opening with 0.1 s of untimed runs (the previous "
    "artifact's spinning threads and cached weights must not weigh on it); all graph optimizations; "
    "{threads} intra-op threads for ONNX Runtime and torch alike; wall-clock per run with time.perf_counter; "
    "p50/p90/p99 over the timed runs, throughput = batch size / p50; on CUDA, ONNX Runtime runs through "
    "IO binding with inputs and outputs on the device and torch calls end in torch.cuda.synchronize; "
    "input shapes: {shapes}, rows of the held-out split cycled to the batch size"
)


def recommend(artifacts: list[dict], budget: float, device_name: str | None) -> dict | None:
    """The fastest passed artifact whose metric is within ``budget`` of the baseline's (ties: better
    metric, then smaller), among those without warnings when any of them qualifies: a warned
    artifact (slower somewhere, not smaller, weak parity) is never picked over a clean one. None
    without a measured baseline.

    When a timing the choice rests on (a qualifying artifact's or the baseline's headline row) is
    unreliable, no speed is claimed: the smallest qualifying artifact is chosen (``basis: size``), and
    the reason says to re-measure idle."""
    base = next((a for a in artifacts if a["name"] == "baseline" and "metric" in a), None)
    if base is None:
        return None
    candidates, higher = [], higher_is_better(artifacts)
    for artifact in artifacts:
        latency = headline_latency(artifact, device_name)
        if artifact.get("status") != "passed" or "metric" not in artifact or latency is None:
            continue
        drop = metric_loss(base["metric"]["value"], artifact["metric"]["value"], higher)
        if drop <= budget:
            warned = bool(artifact.get("warnings"))
            candidates.append((warned, latency["p50_ms"], drop, artifact["size_bytes"], artifact, latency))
    if not candidates:
        return None
    base_latency = headline_latency(base, device_name)
    shaky = unreliable(base_latency) or any(unreliable(c[5]) for c in candidates)
    by_size, by_speed = (lambda c: (c[0], c[3], c[2])), (lambda c: c[:4])
    warned, p50, drop, _, best, _ = min(candidates, key=by_size if shaky else by_speed)
    size = f"{best['size_bytes'] / 1e6:.3f} MB ({best['size_bytes'] / base['size_bytes']:.2f}× baseline)"
    within = f"within the metric budget ({drop:+.4f} drop ≤ {budget})"
    if shaky:
        reason = (
            f"smallest artifact {within}: {size}; no speed is claimed, the timings it would rest on are "
            "unreliable: re-measure idle"
        )
    else:
        reason = f"fastest artifact {within}: {p50:.3f} ms p50 ({p50 / base_latency['p50_ms']:.2f}× baseline), {size}"
    return {
        "name": best["name"],
        "path": best["path"],
        "basis": "size" if shaky else "latency",
        "reason": reason + ("; every artifact within the budget has warnings (see them)" if warned else ""),
    }


def _gpu_section(artifacts: list[dict], environment: dict) -> dict:
    cuda = [e for a in artifacts for e in a.get("latency", []) if e["device"] == "cuda"]
    names = sorted({e["device_name"] for e in cuda})
    if names:
        earlier = " (earlier measurements, not re-measured here)" if all(e.get("stale") for e in cuda) else ""
        return {"measured": True, "devices": names, "note": f"GPU: measured on {', '.join(names)}{earlier}"}
    note = environment["gpu"].get("note") or f"GPU: {environment['gpu'].get('name')} present, but nothing ran on it"
    return {"measured": False, "devices": [], "note": note}


def _input_shapes(artifacts: list[dict]) -> str:
    shapes = next((a["input_shapes"] for a in artifacts if a.get("input_shapes")), None)
    return ", ".join(f"{name} {shape}" for name, shape in shapes.items()) if shapes else "see artifacts"


STOP_WARNINGS = {
    "max_seconds": "stopped by time after {steps} of {planned} steps: this result depends on machine load",
    "early_stopping": "stopped early (no better validation metric) after {steps} of {planned} steps",
}


def stage_warnings(stages: list[StageResult]) -> list[str]:
    """A pass that ran fewer steps than planned says so, and why."""
    warnings = []
    for stage in stages:
        record = stage.record or {}
        text = STOP_WARNINGS.get(record.get("stopped_by"))
        if text:
            warnings.append(f"{stage.name}: " + text.format(steps=record["steps"], planned=record["planned_steps"]))
    return warnings


def _load_text(entry: dict) -> str:
    others = entry.get("other_cores")
    text = f"load per core {entry.get('load_before')} -> {entry.get('load_after')}"
    return text if others is None else f"{text}, other processes {others} cores"


def timing_banner(artifacts: list[dict]) -> str | None:
    """One line for every latency entry whose spread or machine load makes it unreliable: the summary's
    first line, so that no speed-up in the report reads as a result. None when every timing holds."""
    rows = [(a["name"], e) for a in artifacts for e in a.get("latency", []) if unreliable(e)]
    if not rows:
        return None
    names = ", ".join(dict.fromkeys(name for name, _ in rows))
    loads = sorted({_load_text(e) for _, e in rows})
    return (
        f"Timings unreliable: {len(rows)} latency rows ({names}) were measured under load or spread too wide "
        f"({loads[0]}{' ...' if len(loads) > 1 else ''}); they are marked ⚠ in the latency table and the plots, "
        "and no speed-up built on them is a result: re-measure idle (modelpress report <run folder>)"
    )


def stale_warnings(artifacts: list[dict]) -> list[str]:
    """Latency rows ``modelpress report`` could not measure again, grouped by why: they stay in the
    report marked ``stale`` (with when and where they were measured) and are compared with nothing."""
    by_reason: dict[str, dict[str, int]] = {}
    for artifact in artifacts:
        for entry in artifact.get("latency", []):
            if entry.get("stale"):
                rows = by_reason.setdefault(entry.get("stale_reason", "not re-measured"), {})
                rows[artifact["name"]] = rows.get(artifact["name"], 0) + 1
    return [
        f"{sum(rows.values())} latency rows of {', '.join(rows)} are from an earlier measurement, "
        f"marked stale: {reason}"
        for reason, rows in by_reason.items()
    ]


def build_report(
    recipe: Recipe,
    stages: list[StageResult],
    artifacts: list[dict],
    environment: dict,
    logged: list[str] | None = None,
    run_warnings: list[str] | None = None,
) -> dict:
    """The report's data model. ``logged``: the warnings printed while it was made (``log.collect_warnings``),
    as printed; ``run_warnings``: those of the run that made the artifacts, when this re-measures it
    (default: ``logged``). Both reach ``summary.warnings``, once each; the run's are kept in ``run_warnings``."""
    spec = recipe.report
    threads = spec.threads or environment["usable_cores"]
    logged = list(logged or [])
    run_warnings = logged if run_warnings is None else list(run_warnings)
    warnings = [f"{a['name']}: {w}" for a in artifacts for w in a.get("warnings", [])]
    warnings += [f"{a['name']}: {a.get('error', 'failed')}" for a in artifacts if a.get("status") != "passed"]
    warnings += stage_warnings(stages) + stale_warnings(artifacts)
    warnings += run_warnings + logged
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": {"name": recipe.name, "sha256": recipe.sha256(), "passes": [p.to_dict() for p in recipe.passes]},
        "summary": {
            "timing_banner": timing_banner(artifacts),
            "recommended": recommend(artifacts, spec.max_metric_drop, environment["cpu"]),
            "max_metric_drop": spec.max_metric_drop,
            "warnings": list(dict.fromkeys(warnings)),
            "run_warnings": run_warnings,
        },
        "stages": [
            {
                "name": s.name,
                "pass": s.pass_name,
                "metric": {"name": s.metric_name, "value": s.metric},
                "params": s.params,
                "nonzero_params": s.nonzero_params,
                "macs": s.macs,
                "dense_bytes": s.dense_bytes,
                "seconds": s.seconds,
                "layers": s.layers,
                "record": s.record,
            }
            for s in stages
        ],
        "artifacts": artifacts,
        "gpu": _gpu_section(artifacts, environment),
        "latency_method": METHOD.format(
            warmup=spec.warmup,
            iterations=spec.iterations,
            max_seconds=spec.max_seconds,
            threads=threads,
            shapes=_input_shapes(artifacts),
        ),
        "environment": environment,
        "plots": {},
    }


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """Write the plots, report.json, report.md and report.html; return the JSON path."""
    report["plots"] = write_plots(out_dir, report)
    path = write_json_atomic(out_dir / "report.json", report)
    write_model_cards(out_dir, report)  # the cards' figures are report.json's, rewritten with it
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    write_text_atomic(out_dir / "report.html", render_html(report, out_dir))
    return path
