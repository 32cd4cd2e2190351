"""The report: one data model rendered as ``report.json`` and ``report.md``.

The JSON layout is versioned by ``schema`` and documented in ``reports/README.md``.
Ratios compare each artifact with the baseline artifact measured in the same run,
so they stay meaningful on a noisy, shared machine.
"""

import datetime
from pathlib import Path
from typing import Any

from compress.io import write_json_atomic, write_text_atomic
from compress.recipe import Recipe
from compress.stages import StageResult

SCHEMA = "modelpress.report/1"
METHOD = (
    "ONNX Runtime CPUExecutionProvider, all graph optimizations, fixed intra-op threads; "
    "per batch size: {warmup} warm-up runs per artifact, then up to {iterations} timed runs "
    "or {max_seconds} s per artifact, with the artifacts taking turns in 10 rounds so that "
    "machine load hits all of them alike; each turn opens with 0.1 s of untimed runs, so that "
    "the previous artifact's spinning threads and cached weights do not weigh on it; "
    "wall-clock per run; p50/p90 over the timed runs; input: held-out rows cycled to the batch size"
)


def build_report(recipe: Recipe, stages: list[StageResult], artifacts: list[dict], environment: dict) -> dict:
    spec = recipe.report
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "recipe": {"name": recipe.name, "sha256": recipe.sha256(), "passes": [p.to_dict() for p in recipe.passes]},
        "stages": [
            {
                "name": s.name,
                "pass": s.pass_name,
                "metric": {"name": s.metric_name, "value": s.metric},
                "params": s.params,
                "nonzero_params": s.nonzero_params,
                "seconds": s.seconds,
                "record": s.record,
            }
            for s in stages
        ],
        "artifacts": artifacts,
        "latency_method": METHOD.format(warmup=spec.warmup, iterations=spec.iterations, max_seconds=spec.max_seconds),
        "environment": environment,
    }


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}×" if base else "–"


def _latency_rows(artifacts: list[dict]) -> list[str]:
    baseline = next((a for a in artifacts if a["name"] == "baseline"), None)
    base_p50 = {e["batch_size"]: e["p50_ms"] for e in (baseline or {}).get("latency", [])}
    rows = []
    for artifact in artifacts:
        for e in artifact.get("latency", []):
            rows.append(
                f"| {artifact['name']} | {e['device']} ({e['provider']}) | {e['batch_size']} | {e['threads']} "
                f"| {e['p50_ms']:.3f} | {e['p90_ms']:.3f} | {_ratio(e['p50_ms'], base_p50.get(e['batch_size']))} |"
            )
    return rows


def _quantized_rows(artifacts: list[dict], stages: list[dict]) -> list[str]:
    """Scheme, budget and the layers kept in float per quantized artifact, beside the torch metric."""
    quantized = [a for a in artifacts if "scheme" in a]
    if not quantized:
        return []
    torch_metric = {s["name"]: f"{s['metric']['value']:.4f}" for s in stages}
    lines = [
        "",
        "## Quantized artifacts",
        "",
        "| artifact | scheme | metric in ORT | metric in torch (source) | budget | quantized nodes | kept float |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in quantized:
        budget = a.get("budget")
        verdict = (
            f"drop {budget['drop']:+.4f} ≤ {budget['budget']}: {'met' if budget['met'] else '**not met**'}"
            if budget
            else "none"
        )
        metric = f"{a['metric']['value']:.4f}" if "metric" in a else "–"
        kept = ", ".join(f"`{n}`" for n in a.get("float_nodes", [])) or "none"
        lines.append(
            f"| {a['name']} | {a['scheme']} | {metric} | {torch_metric.get(a.get('source_stage'), '–')} "
            f"| {verdict} | {a.get('quantized_nodes', '–')} | {kept} |"
        )
    for a in quantized:
        for warning in a.get("warnings", []):
            lines.append(f"\n**Warning, {a['name']}:** {warning}")
    return lines


def render_markdown(report: dict) -> str:
    env, stages, artifacts = report["environment"], report["stages"], report["artifacts"]
    base_metric = stages[0]["metric"]["value"] if stages else None
    lines = [
        f"# modelpress report: {report['recipe']['name']}",
        "",
        f"Schema `{report['schema']}`, created {report['created']}, recipe sha256 `{report['recipe']['sha256'][:12]}`.",
        "",
        "## Stages (torch)",
        "",
        "| stage | metric | Δ vs baseline | params | non-zero params | MACs (vs before the pass) | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in stages:
        delta = s["metric"]["value"] - base_metric
        record = s.get("record") or {}
        macs = (
            f"{record['macs_after']:,} ({_ratio(record['macs_after'], record['macs_before'])})"
            if "macs_after" in record
            else "–"
        )
        lines.append(
            f"| {s['name']} | {s['metric']['name']} {s['metric']['value']:.4f} | {delta:+.4f} "
            f"| {s['params']:,} | {s['nonzero_params']:,} | {macs} | {s['seconds']:.1f} |"
        )
    lines += [
        "",
        "## Artifacts (ONNX, measured in ONNX Runtime)",
        "",
        "| artifact | status | metric | parity max abs diff | size (vs baseline) | gzip size (vs baseline) | opset |",
        "|---|---|---|---|---|---|---|",
    ]
    base = next((a for a in artifacts if a["name"] == "baseline"), {})
    for a in artifacts:
        metric = f"{a['metric']['name']} {a['metric']['value']:.4f}" if "metric" in a else "not measured"
        diff = f"{a['parity']['max_abs_diff']:.2e}" if "parity" in a else "–"
        size, gz = (
            f"{a[key] / 1e6:.3f} MB ({_ratio(a[key], base.get(key))})" if key in a else "–"
            for key in ("size_bytes", "size_gzip_bytes")
        )
        lines.append(f"| {a['name']} | {a['status']} | {metric} | {diff} | {size} | {gz} | {a['opset']} |")
    failed = [a for a in artifacts if a["status"] != "passed"]
    for a in failed:
        lines.append(f"\n**{a['name']} failed:** {a.get('error', 'unknown error')}")
    lines += _quantized_rows(artifacts, stages)
    lines += [
        "",
        "## Latency",
        "",
        "| artifact | device | batch | threads | p50 (ms) | p90 (ms) | p50 vs baseline |",
        "|---|---|---|---|---|---|---|",
        *_latency_rows(artifacts),
        "",
        env["gpu"].get("note") or f"GPU: {env['gpu']['name']} (not measured by this report)",
        "",
        f"Method: {report['latency_method']}.",
        "",
        "## Environment",
        "",
        f"- CPU: {env['cpu']}, {env['cores']} cores ({env['usable_cores']} usable), {env['memory_gib']} GiB",
        f"- Python {env['python']} on {env['platform']}",
        "- " + ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"- git commit: {env['git_commit'] or 'unknown'}",
        "",
    ]
    return "\n".join(lines)


def write_report(out_dir: Path, report: dict[str, Any]) -> Path:
    """Write report.json and report.md; return the JSON path."""
    path = write_json_atomic(out_dir / "report.json", report)
    write_text_atomic(out_dir / "report.md", render_markdown(report))
    return path
