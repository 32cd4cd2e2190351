"""The report's plots (matplotlib, PNG): metric vs latency, vs size and, for decoders, vs decode speed
in onnxruntime-genai, each with the Pareto front marked; the final model's per-layer sparsity and
precision.

matplotlib runs headless (Agg) and is imported only when a report is written.
"""

from pathlib import Path

from compress.core.io import write_atomic
from export.report.summary import headline_latency, higher_is_better, pareto_front, unreliable

PLOT_DIR = "plots"
PRECISION_COLOURS = {"float32": "#4c72b0", "int8": "#dd8452", "nf4": "#55a868", "fp4": "#c44e52"}


def _save(figure, path: Path) -> None:
    write_atomic(path, lambda tmp: figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))


def _tradeoff(report: dict, cost_of, xlabel: str, title: str, path: Path, shaky_of=lambda a: False) -> bool:
    """Metric against a cost per artifact, the Pareto front as a dashed line; False when nothing to plot.
    ``shaky_of``: whether an artifact's cost is an unreliable timing (its point is marked)."""
    points, names, shaky = [], [], []
    for artifact in report["artifacts"]:
        cost = cost_of(artifact)
        if artifact.get("status") == "passed" and "metric" in artifact and cost is not None:
            points.append((cost, artifact["metric"]["value"]))
            names.append(artifact["name"])
            shaky.append(shaky_of(artifact))
    metric = report["artifacts"][0].get("metric", {}).get("name", "metric") if report["artifacts"] else "metric"
    higher = higher_is_better(report["artifacts"])
    return plot_front(points, names, xlabel, f"{metric} (ONNX Runtime)", title, path, higher, shaky)


def plot_front(
    points: list[tuple[float, float]],
    names: list[str],
    xlabel: str,
    ylabel: str,
    title: str,
    path: Path,
    higher_is_better: bool = True,
    unreliable: list[bool] | None = None,
) -> bool:
    """Scatter of ``(cost, metric)`` points, named, the Pareto front dashed; False when there are none.
    Shared by the run report (one point per artifact) and ``modelpress search`` (one per trial's artifact).
    Points whose cost is an ``unreliable`` timing are drawn as orange crosses, their names marked ⚠."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        return False
    front = sorted(pareto_front(points, higher_is_better), key=lambda i: points[i][0])
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    axes.scatter([p[0] for p in points], [p[1] for p in points], color="#4c72b0", zorder=3)
    axes.plot([points[i][0] for i in front], [points[i][1] for i in front], "--", color="#c44e52", label="Pareto front")
    axes.scatter(
        [points[i][0] for i in front], [points[i][1] for i in front], s=90, facecolors="none", edgecolors="#c44e52"
    )
    shaky = [i for i, flag in enumerate(unreliable or []) if flag]
    if shaky:
        axes.scatter(
            [points[i][0] for i in shaky],
            [points[i][1] for i in shaky],
            marker="x",
            s=80,
            color="#dd8452",
            zorder=4,
            label="timing unreliable: re-measure idle",
        )
    for index, ((x, y), name) in enumerate(zip(points, names)):  # alternate sides: close points stay legible
        name = f"⚠ {name}" if index in shaky else name
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(5, 6 if index % 2 else -12), fontsize=8)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    _save(figure, path)
    plt.close(figure)
    return True


def _layers(report: dict, path: Path) -> bool:
    """Per layer of the final stage: the non-zero weights left, as a share of the layer's baseline
    weights (so structured and unstructured pruning both show), coloured by precision."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    stages = report["stages"]
    layers = stages[-1].get("layers") if stages else None
    if not layers or "nonzero" not in layers[0]:
        return False
    before = {layer["name"]: layer["params"] for layer in stages[0].get("layers") or []}
    kept = [100 * layer["nonzero"] / before.get(layer["name"], layer["params"]) for layer in layers]
    height = max(2.5, 0.22 * len(layers) + 1)
    figure, axes = plt.subplots(figsize=(6.4, height))
    colours = [PRECISION_COLOURS.get(layer["precision"], "#8172b3") for layer in layers]
    axes.barh(range(len(layers)), kept, color=colours)
    axes.set_yticks(range(len(layers)), [layer["name"] for layer in layers], fontsize=7)
    axes.invert_yaxis()
    axes.set(
        xlabel="non-zero weights left, % of the layer's baseline weights",
        xlim=(0, 105),
        title=f"Layers after {stages[-1]['name']}: weights left and precision",
    )
    precisions = sorted({layer["precision"] for layer in layers})
    axes.legend(
        handles=[Patch(color=PRECISION_COLOURS.get(p, "#8172b3"), label=p) for p in precisions],
        title="precision in torch",
        fontsize=8,
        loc="lower right",
    )
    axes.grid(axis="x", alpha=0.3)
    _save(figure, path)
    plt.close(figure)
    return True


def decode_row(artifact: dict) -> dict | None:
    """The artifact's generation row at its smallest batch (batch 1 in the default report), if timed."""
    rows = [row for row in artifact.get("generation") or [] if row.get("decode_tokens_per_s")]
    return min(rows, key=lambda row: row["batch_size"], default=None)


def _decode_ms(artifact: dict) -> float | None:
    # Milliseconds per new token, so that the x axis is a cost like the other plots' (lower is better).
    row = decode_row(artifact)
    return round(1000.0 / row["decode_tokens_per_s"], 3) if row else None


def write_plots(out_dir: Path, report: dict) -> dict[str, str]:
    """Write the PNGs under ``plots/``; return name -> path relative to ``out_dir`` for those written."""
    import matplotlib

    matplotlib.use("Agg")
    cpu = report["environment"]["cpu"]

    def latency(artifact):
        entry = headline_latency(artifact, cpu)
        return entry["p50_ms"] if entry else None

    headline = [e for a in report["artifacts"] if (e := headline_latency(a, cpu))]
    batch = max((e["batch_size"] for e in headline), default="largest")
    decode_rows = [row for a in report["artifacts"] if (row := decode_row(a))]
    plots = {
        "metric_vs_latency": lambda p: _tradeoff(
            report,
            latency,
            f"p50 latency, ms (ONNX Runtime CPU, batch {batch})",
            "Metric vs latency",
            p,
            lambda a: unreliable(headline_latency(a, cpu)),
        ),
        "metric_vs_size": lambda p: _tradeoff(
            report, lambda a: a.get("size_bytes", 0) / 1e6 or None, "size on disk, MB", "Metric vs size", p
        ),
        "metric_vs_decode": lambda p: _tradeoff(
            report,
            _decode_ms,
            f"decode, ms per new token (onnxruntime-genai, batch {(decode_rows or [{}])[0].get('batch_size', 1)})",
            "Metric vs decode speed",
            p,
            lambda a: bool((decode_row(a) or {}).get("unreliable")),
        ),
        "layers": lambda p: _layers(report, p),
    }
    written = {}
    for name, draw in plots.items():
        path = out_dir / PLOT_DIR / f"{name}.png"
        if draw(path):
            written[name] = str(path.relative_to(out_dir))
    return written
