"""Why a search ends without a chosen point, in the words of its flags: no point within ``--max-drop``,
nothing faster than fp32, or the time budget (``--budget-minutes``) spent first. ``search``: a
``compress.search.rungs.Search``."""


def failures(search) -> str:
    """`` (N of M candidate trials failed: see run.log)`` when some did, else empty."""
    tried = [t for t in search.trials if t["passes"]]
    failed = [t for t in tried if not search.points(t)]
    return f" ({len(failed)} of {len(tried)} candidate trials failed: see run.log)" if failed else ""


def closest(search) -> str:
    """No finalist: none scored on the whole validation split, or none within ``--max-drop``."""
    scored = [p for trial in search.trials if trial["validation_complete"] for p in search.points(trial)]
    if not scored:
        return (
            f"search: no trial was scored on the whole validation split within --budget-minutes "
            f"{search.spec.budget_minutes:g}{failures(search)}; raise --budget-minutes"
        )
    nearest = min(scored, key=lambda p: p["drop"])
    return (
        f"search: no point is within --max-drop {search.spec.max_drop:g}: the closest, {nearest['name']}, loses "
        f"{nearest['drop']:.2f} points; raise --max-drop, or add none to --quantize so that the fp32 points count"
        f"{budget_note(search)}"
    )


def budget_note(search) -> str:
    """When the time budget stopped the search, the message says so: the answer may lie past it."""
    if not search.stopped_by_budget:
        return ""
    tried = len([t for t in search.trials if t["passes"]])
    return (
        f"; the time budget (--budget-minutes {search.spec.budget_minutes:g}) stopped the search after {tried} "
        "candidate trials: raise --budget-minutes (a rerun into the same folder resumes them)"
    )


def nothing_beats_fp32(search) -> str:
    """Why the fp32 model is the best answer: the time ran out first, or no compressed point helps."""
    if search.stopped_by_budget and not any(t["passes"] and t["validation_complete"] for t in search.trials):
        return (
            f"search: the time budget (--budget-minutes {search.spec.budget_minutes:g}) ran out before any "
            "candidate reached the last rung; raise --budget-minutes (a rerun into the same folder resumes the "
            "finished trials)"
        )
    return (
        f"search: no compressed point within --max-drop {search.spec.max_drop:g} is "
        f"{'faster' if search.spec.objective == 'latency' else 'smaller'} than the fp32 model on this machine"
        f"{failures(search)}; "
        f"widen the space (the search: section), or raise --max-drop{budget_note(search)}"
    )
