"""Renderings of the report's data model: ``report.md`` and a self-contained ``report.html``.

Both come from one list of blocks (headings, paragraphs, lists, tables, images), so the two
files always say the same. The HTML embeds its plots as data URIs and its style inline:
no external URL, it opens offline and can be mailed as one file.
"""

import base64
import html
import math
import re
from pathlib import Path

from export.measure.benchmark import latency_key
from export.report.decoder_sections import accuracy_levels, generation, language
from export.report.summary import higher_is_better, pareto_front, unreliable


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}×" if value is not None and base else "–"


def _mb(size: int | None) -> str:
    return f"{size / 1e6:.3f} MB" if size is not None else "–"


def _summary(report: dict) -> list:
    summary = report["summary"]
    best = summary["recommended"]
    blocks = [("h2", "Summary")]
    if summary.get("timing_banner"):  # first: every speed figure below reads in its light
        blocks.append(("p", f"**⚠ {summary['timing_banner']}.**"))
    if best:
        blocks.append(("p", f"**Recommended artifact: `{best['name']}`** (`{best['path']}`): {best['reason']}."))
    else:
        blocks.append(
            (
                "p",
                f"**No artifact recommended:** none passed within {summary['max_metric_drop']} of the baseline metric.",
            )
        )
    warnings = summary["warnings"]
    blocks.append(("p", f"**Warnings ({len(warnings)}):**" if warnings else "**Warnings:** none."))
    if warnings:
        blocks.append(("list", warnings))
    blocks.append(("p", report["gpu"]["note"] + "."))
    return blocks


def _stages(report: dict) -> list:
    stages = report["stages"]
    base = stages[0] if stages else {}
    rows = []
    for s in stages:
        rows.append(
            [
                s["name"],
                f"{s['metric']['name']} {s['metric']['value']:.4f}",
                f"{s['metric']['value'] - base['metric']['value']:+.4f}",
                f"{s['params']:,}",
                f"{s['nonzero_params']:,} ({_ratio(s['nonzero_params'], base['params'])})",
                f"{s['macs']:,} ({_ratio(s['macs'], base.get('macs'))})" if s.get("macs") else "–",
                f"{_mb(s.get('dense_bytes'))} ({_ratio(s.get('dense_bytes'), base.get('dense_bytes'))})",
                f"{s['seconds']:.1f}",
            ]
        )
    headers = ["stage", "metric", "Δ vs baseline", "params", "non-zero (vs baseline)", "MACs (vs baseline)"]
    return [("h2", "Stages (torch)"), ("table", [*headers, "dense size (vs baseline)", "time (s)"], rows)]


def _artifacts(report: dict) -> list:
    artifacts = report["artifacts"]
    base = next((a for a in artifacts if a["name"] == "baseline"), {})
    measured = [a for a in artifacts if "metric" in a and "size_bytes" in a]
    points = [(a["size_bytes"], a["metric"]["value"]) for a in measured]
    front = {measured[i]["name"] for i in pareto_front(points, higher_is_better(measured))}
    rows = []
    for a in artifacts:
        metric = f"{a['metric']['name']} {a['metric']['value']:.4f}" if "metric" in a else "not measured"
        delta = f"{a['metric']['value'] - base['metric']['value']:+.4f}" if "metric" in a and "metric" in base else "–"
        parity = a.get("parity")
        parity_text = f"{parity['max_abs_diff']:.2e} / {parity['min_cosine']:.5f}" if parity else "–"
        rows.append(
            [
                a["name"],
                a["status"],
                metric,
                delta,
                parity_text,
                f"{_mb(a.get('size_bytes'))} ({_ratio(a.get('size_bytes'), base.get('size_bytes'))})",
                f"{_mb(a.get('size_gzip_bytes'))} ({_ratio(a.get('size_gzip_bytes'), base.get('size_gzip_bytes'))})",
                str(a.get("opset", "–")),
                "yes" if a["name"] in front else "",
            ]
        )
    headers = ["artifact", "status", "metric (in ONNX Runtime)", "Δ vs baseline", "parity max abs diff / min cosine"]
    blocks = [
        ("h2", "Artifacts (ONNX, measured in ONNX Runtime)"),
        ("table", [*headers, "size (vs baseline)", "gzip size (vs baseline)", "opset", "Pareto (size)"], rows),
    ]
    blocks += [
        ("p", f"**{a['name']} failed:** {a.get('error', 'unknown error')}")
        for a in artifacts
        if a["status"] != "passed"
    ]
    return blocks + _quantized(artifacts, report["stages"])


def _scheme(artifact: dict) -> str:
    """The scheme, with the int4 algorithm when it is not the default one: ``int4 (hqq)``."""
    algorithm = (artifact.get("int4") or {}).get("algorithm", "default")
    return artifact["scheme"] + (f" ({algorithm})" if algorithm != "default" else "")


def _kept_float(artifact: dict) -> str:
    """The nodes left float, grouped by why (records before ``float_reasons`` give names only)."""
    reasons = artifact.get("float_reasons") or dict.fromkeys(artifact.get("float_nodes", []), "")
    groups: dict[str, list[str]] = {}
    for node, why in reasons.items():
        groups.setdefault(why, []).append(f"`{node}`")
    return "; ".join(", ".join(nodes) + (f" ({why})" if why else "") for why, nodes in groups.items()) or "none"


def _quantized(artifacts: list[dict], stages: list[dict]) -> list:
    quantized = [a for a in artifacts if "scheme" in a]
    if not quantized:
        return []
    torch_metric = {s["name"]: f"{s['metric']['value']:.4f}" for s in stages}
    rows = []
    for a in quantized:
        budget = a.get("budget")
        verdict = (
            f"drop {budget['drop']:+.4f} ≤ {budget['budget']}: {'met' if budget['met'] else '**not met**'}"
            if budget
            else "none"
        )
        rows.append(
            [
                a["name"],
                _scheme(a),
                f"{a['metric']['value']:.4f}" if "metric" in a else "–",
                torch_metric.get(a.get("source_stage"), "–"),
                verdict,
                str(a.get("quantized_nodes", "–")),
                _kept_float(a),
            ]
        )
    headers = ["artifact", "scheme", "metric in ORT", "metric in torch (source)", "budget", "quantized nodes"]
    blocks = [("h2", "Quantized artifacts"), ("table", [*headers, "kept float"], rows)]
    for a in quantized:
        blocks += _sensitivity(f"{a['name']}: sensitivity of the accuracy budget", a.get("budget"))
    for stage in stages:
        blocks += _sensitivity(f"{stage['name']} (torch): sensitivity of the accuracy budget", _stage_budget(stage))
    return blocks


def _stage_budget(stage: dict) -> dict | None:
    return (stage.get("record") or {}).get("budget")


def _sensitivity(title: str, budget: dict | None) -> list:
    """Per layer: the cheap ranking (output SQNR alone, on calibration data) beside the measured drop."""
    if not budget or not (budget.get("sqnr_db") or budget.get("sensitivity")):
        return []
    sqnr, drops = budget.get("sqnr_db") or {}, budget.get("sensitivity") or {}
    kept = budget.get("float_layers") or []
    layers = sorted(
        {*sqnr, *drops}, key=lambda n: (sqnr.get(n) is not None, sqnr.get(n) or 0.0, -drops.get(n, -math.inf))
    )
    rows = [
        [
            f"`{name}`",
            "–" if sqnr.get(name) is None else f"{sqnr[name]:.1f}",
            f"{drops[name]:+.4f}" if name in drops else "not measured",
            "yes" if name in kept else "",
        ]
        for name in layers
    ]
    measured = budget.get("candidates")
    note = (
        f"SQNR: each layer's output, quantized alone, against float on calibration data (lower: more "
        f"sensitive). The metric drop with only that layer quantized was measured for the {measured} lowest; "
        f"{budget.get('evaluations')} metric evaluations in all (the full variant, the candidates, the fallbacks)."
        if measured is not None
        else f"The metric drop with only that layer quantized was measured for every layer; "
        f"{budget.get('evaluations')} metric evaluations in all."
    )
    return [("h3", title), ("p", note), ("table", ["layer", "SQNR dB", "measured drop", "kept float"], rows)]


def _measurement(entry: dict) -> tuple:
    """Which measurement an entry belongs to: this one, or an earlier one that was not repeated."""
    return (True, entry.get("stale_reason")) if entry.get("stale") else (False, None)


def _measured(entry: dict) -> str:
    when = entry.get("measured_at") or "time not recorded"
    if entry.get("stale"):
        return f"**not re-measured** ({when}): {entry.get('stale_reason', 'earlier measurement')}"
    return when


def _latency(report: dict) -> list:
    artifacts = report["artifacts"]
    baseline = next((a for a in artifacts if a["name"] == "baseline"), {})
    # A ratio only between figures of one measurement: fresh with fresh, stale with stale of the same time.
    base_rows = {(latency_key(e), _measurement(e)): e for e in baseline.get("latency", [])}
    rows = []
    for a in artifacts:
        for e in a.get("latency", []):
            base = base_rows.get((latency_key(e), _measurement(e)))
            shaky = unreliable(e) or unreliable(base)  # a ratio built on such a row is no result
            rows.append(
                [
                    a["name"] + (" ⚠ unreliable" if unreliable(e) else ""),
                    f"{e['device']}: {e.get('device_name', '?')}",
                    f"{e['runtime']} ({e['provider']})",
                    str(e["batch_size"]),
                    str(e["threads"]),
                    f"{e['p50_ms']:.3f}",
                    f"{e['p90_ms']:.3f}",
                    f"{e['p99_ms']:.3f}" if "p99_ms" in e else "–",
                    f"{e['throughput_per_s']:,.1f}" if "throughput_per_s" in e else "–",
                    "– (timing unreliable)" if shaky else _ratio(e["p50_ms"], base and base["p50_ms"]),
                    _measured(e),
                ]
            )
    headers = ["artifact", "device", "runtime (provider)", "batch", "threads", "p50 (ms)", "p90 (ms)", "p99 (ms)"]
    return [
        ("h2", "Latency"),
        ("table", [*headers, "throughput (samples/s)", "p50 vs baseline", "measured"], rows),
        ("p", report["gpu"]["note"] + "."),
        ("p", f"Method: {report['latency_method']}."),
    ]


def _edge(report: dict) -> list:
    support_rows, ort_rows = [], []
    for a in report["artifacts"]:
        for entry in a.get("provider_support", []):
            if not entry["checked"]:
                verdict = f"not checked ({entry['reason']})"
            elif entry["supported"]:
                verdict = f"all {entry['nodes']} nodes"
            else:
                verdict = "falls back to CPU: " + ", ".join(f"{op} ×{n}" for op, n in entry["fallback_ops"].items())
            support_rows.append([a["name"], entry["provider"], verdict])
        ort = a.get("ort_format")
        if ort:
            ort_rows.append(
                [
                    a["name"],
                    f"`{ort['path']}`",
                    _mb(ort["size_bytes"]),
                    f"`{ort['required_operators_config']}`",
                    str(len(ort["required_operators"])),
                ]
                if ort["status"] == "passed"
                else [a["name"], f"failed: {ort['error']}", "–", "–", "–"]
            )
    blocks = [
        ("h2", "Execution providers"),
        ("p", "Where ONNX Runtime placed each node of the optimized graph (a profiled run)."),
    ]
    blocks.append(("table", ["artifact", "provider", "nodes it runs"], support_rows))
    if ort_rows:
        blocks += [
            ("h2", "ORT format (ORT Mobile)"),
            ("table", ["artifact", ".ort file", "size", "required operators config", "operators"], ort_rows),
        ]
    return blocks


def _plots(report: dict) -> list:
    titles = {
        "metric_vs_latency": "Metric vs latency",
        "metric_vs_size": "Metric vs size",
        "metric_vs_decode": "Metric vs decode speed (onnxruntime-genai)",
        "layers": "Per-layer weights left and precision in torch (ONNX-side quantization: see Quantized artifacts)",
    }
    return [("h2", "Plots")] + [("image", titles.get(name, name), path) for name, path in report["plots"].items()]


def _environment(report: dict) -> list:
    env = report["environment"]
    gpu = env["gpu"]
    items = [
        f"CPU: {env['cpu']}, {env['cores']} cores ({env['usable_cores']} usable), {env['memory_gib']} GiB",
        f"GPU: {gpu['name']}, driver {gpu.get('driver') or 'unknown'}, CUDA {gpu.get('cuda')}"
        if gpu["available"]
        else gpu["note"],
        f"Python {env['python']} on {env['platform']}",
        ", ".join(f"{k} {v}" for k, v in env["versions"].items() if v),
        f"git commit: {env['git_commit'] or 'unknown'}",
    ]
    return [("h2", "Environment"), ("list", items)]


def blocks(report: dict) -> list:
    head = [
        ("h1", f"modelpress report: {report['recipe']['name']}"),
        (
            "p",
            f"Schema `{report['schema']}`, created {report['created']}, "
            f"recipe sha256 `{report['recipe']['sha256'][:12]}`.",
        ),
    ]
    sections = (_summary, _stages, _artifacts, _latency, language, generation, accuracy_levels, _edge, _plots)
    sections += (_environment,)
    return head + [block for section in sections for block in section(report)]


MARKDOWN = {
    "h1": lambda b: f"# {b[1]}",
    "h2": lambda b: f"## {b[1]}",
    "h3": lambda b: f"### {b[1]}",
    "p": lambda b: b[1],
    "list": lambda b: "\n".join(f"- {item}" for item in b[1]),
    "table": lambda b: "\n".join(
        [f"| {' | '.join(b[1])} |", "|" + "---|" * len(b[1])] + [f"| {' | '.join(row)} |" for row in b[2]]
    ),
    "image": lambda b: f"![{b[1]}]({b[2]})",
}


def render_markdown(report: dict) -> str:
    return "\n\n".join(MARKDOWN[b[0]](b) for b in blocks(report)) + "\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _image(block, out_dir: Path) -> str:
    data = base64.b64encode((out_dir / block[2]).read_bytes()).decode()
    caption = html.escape(block[1])
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
    )


def _html_table(block) -> str:
    head = "".join(f"<th>{_inline(h)}</th>" for h in block[1])
    body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block[2])
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:24px auto;
  padding:0 16px;color:#222}
h1{font-size:24px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:12.5px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f8}tr:nth-child(even) td{background:#fafbfc}.scroll{overflow-x:auto}
code{background:#f0f0f0;padding:0 3px;border-radius:3px;font-size:12px}
figure{display:inline-block;margin:8px 16px 8px 0;vertical-align:top}figcaption{font-size:12px;color:#555}
img{width:560px;max-width:100%;border:1px solid #eee}
"""


def render_html(report: dict, out_dir: Path) -> str:
    tags = {
        "h1": lambda b: f"<h1>{_inline(b[1])}</h1>",
        "h2": lambda b: f"<h2>{_inline(b[1])}</h2>",
        "h3": lambda b: f"<h3>{_inline(b[1])}</h3>",
        "p": lambda b: f"<p>{_inline(b[1])}</p>",
        "list": lambda b: "<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>",
        "table": _html_table,
        "image": lambda b: _image(b, out_dir),
    }
    body = "\n".join(tags[b[0]](b) for b in blocks(report))
    title = html.escape(f"modelpress report: {report['recipe']['name']}")
    return (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{title}</title>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'><style>{STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )
