"""What the report's data model, its renderings and its plots share: the Pareto front of the
artifacts and the latency entry that stands for an artifact when artifacts are compared."""


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (lower) and metric (higher)."""
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
