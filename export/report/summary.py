"""What the report's data model, its renderings and its plots share: the Pareto front of the
artifacts and the latency entry that stands for an artifact when artifacts are compared."""


def higher_is_better(artifacts: list[dict]) -> bool:
    """The direction of the artifacts' metric, as their records say it (records written before the
    field existed hold higher-is-better metrics)."""
    return next((a["metric"].get("higher_is_better", True) for a in artifacts if "metric" in a), True)


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool = True) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and metric (better: higher, or
    lower for a metric such as perplexity)."""
    sign = 1 if higher_is_better else -1
    points = [(cost, sign * metric) for cost, metric in points]
    front = []
    for i, (cost, metric) in enumerate(points):
        dominated = any(
            c <= cost and m >= metric and (c, m) != (cost, metric) for j, (c, m) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return front


def headline_latency(artifact: dict, device_name: str | None) -> dict | None:
    """The entry compared across artifacts: ONNX Runtime on this CPU at the largest batch size."""
    entries = [
        e
        for e in artifact.get("latency", [])
        if e["runtime"] == "onnxruntime"
        and e["device"] == "cpu"
        and e.get("device_name") == device_name
        and not e.get("stale")
    ]
    return max(entries, key=lambda e: e["batch_size"]) if entries else None


def unreliable(entry: dict | None) -> bool:
    """A fresh latency entry whose spread or machine load makes it no basis for a claim."""
    return bool(entry and entry.get("unreliable") and not entry.get("stale"))
