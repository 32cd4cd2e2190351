"""A report on timings marked unreliable claims no speed (issue 32, item 3): one banner opens the summary,
the latency table and the latency plot mark the rows, no ratio is built on them, and the recommendation
falls back to size and metric."""

import json

import jsonschema

from export.report import plots
from export.report.build import SCHEMA_FILE, write_report
from export.report.render import render_markdown
from tests.export.report.test_report import BASELINE, FAST, artifact, make_report

LOADED = {"unreliable": True, "cv": 0.6, "load_before": 2.4, "load_after": 2.9}


def loaded(record, batch_size=32):
    """``record`` with its timing at ``batch_size`` measured on a busy machine."""
    rows = [{**e, **LOADED} if e["batch_size"] == batch_size else e for e in record["latency"]]
    return {**record, "latency": rows}


# Faster than FAST on a loaded machine, but larger: a speed claim would pick it.
QUICK = artifact("quick", 0.988, 900_000, {1: 0.09, 32: 0.8})


def test_a_report_on_unreliable_timings_says_so_first_and_claims_no_speed(tmp_path, monkeypatch):
    report = make_report([BASELINE, FAST, loaded(QUICK)])
    jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text())).validate(report)
    best = report["summary"]["recommended"]
    assert (best["name"], best["basis"]) == ("fast", "size")  # the smaller one within the budget
    assert "0.250× baseline" not in best["reason"] and "ms p50" not in best["reason"]
    assert "0.25× baseline); no speed is claimed" in best["reason"] and "re-measure idle" in best["reason"]
    assert not any("unreliable" in w for w in report["summary"]["warnings"])  # one banner, not a line per row

    text = render_markdown(report)
    summary = text.split("## Summary\n\n", 1)[1].splitlines()
    assert summary[0].startswith("**⚠ Timings unreliable: 1 latency rows (quick) were measured under load")
    rows = [line for line in text.splitlines() if line.startswith("| quick ⚠ unreliable | cpu")]
    assert len(rows) == 1 and "| 32 |" in rows[0] and "– (timing unreliable)" in rows[0]
    assert "| quick | cpu" in text and "0.45×" in text  # its batch-1 row holds: its ratio stays

    drawn, real = {}, plots.plot_front

    def plot_front(points, names, xlabel, ylabel, title, path, higher=True, unreliable=None):
        drawn[path.stem] = dict(zip(names, unreliable or [False] * len(names)))
        return real(points, names, xlabel, ylabel, title, path, higher, unreliable)

    monkeypatch.setattr(plots, "plot_front", plot_front)
    write_report(tmp_path, report)
    assert drawn["metric_vs_latency"] == {"baseline": False, "fast": False, "quick": True}
    assert not any(drawn["metric_vs_size"].values())


def test_an_unreliable_baseline_row_voids_every_ratio_built_on_it():
    report = make_report([loaded(BASELINE), FAST])
    assert report["summary"]["recommended"]["basis"] == "size"
    text = render_markdown(report)
    assert text.count("– (timing unreliable)") == 2  # baseline's own row and fast's, both at batch 32
    assert report["summary"]["timing_banner"].startswith("Timings unreliable: 1 latency rows (baseline)")
    steady = make_report([BASELINE, FAST])["summary"]
    assert steady["timing_banner"] is None and steady["recommended"]["basis"] == "latency"
