"""A search folder: which files are a search's, and whether a folder may receive this search.

``search.json`` records the search's inputs (its identity), the machine and modelpress version
its timings were taken with among them; a rerun with the same inputs resumes, other inputs are
refused unless ``--force`` replaces the search's own files (and nothing else).
"""

import shutil
from pathlib import Path

from compress.core.errors import OutputError
from compress.core.io import read_json
from compress.core.untrusted import no_link
from compress.engine import folder

STATE = "search.json"
# What a search folder holds, all written by the search: a folder holding these without our
# search.json is someone else's, and is refused.
OURS = (
    STATE,
    "study.db",  # the Optuna study (``study``) when no --storage names another
    "report.md",
    "recipe.yaml",
    "environment.json",
    "trials",
    "work",
    "plots",
    ".search-gate.lock",  # ``workers.Guard``: timing waits for the other workers of this machine
    ".search-timing.lock",
    ".search-claim.lock",  # ``study.Study.claim``: SQLite's claims one process at a time
)
# The plots a search draws (``report._plots``): the only files of plots/ that --force removes.
PLOTS = ("plots/metric_vs_latency.png", "plots/metric_vs_size.png")


def measured_on(threads: int | None) -> dict:
    """What the recorded timings and results hold for: this CPU, the thread count, modelpress's version."""
    from export.measure.environment import cpu_model, package_version
    from export.onnx.runtime import default_threads

    return {"cpu": cpu_model(), "threads": threads or default_threads(), "modelpress": package_version("modelpress")}


def claim(out: Path, identity: dict, force: bool) -> None:
    """Refuse a folder holding another search (other model, data, recipe, batch size or machine) or other files."""
    # No link among the search's folders or the trials' and runs' folders in them: files are written
    # there (kept artifacts, the trials' runs), which must never land outside the search folder.
    for name in ("trials", "work", "plots"):
        if no_link(out / name, f"{name}/ of a search folder") and name != "plots":
            for child in sorted((out / name).iterdir()):
                no_link(child, f"{name}/{child.name} of a search folder")
    state = read_json(out / STATE)
    if state is None:
        foreign = sorted(name for name in OURS if (out / name).exists())
        if foreign:
            raise OutputError(
                f"{out}: holds {', '.join(foreign)} but no {STATE} of a search; choose another --out folder"
            )
        return
    if not isinstance(state, dict):
        raise OutputError(f"{out}: its {STATE} is not a search's record; choose another --out folder")
    if state.get("identity") == identity:
        return
    if not force:
        raise OutputError(
            f"{out}: holds a search of other inputs (model, data, recipe passes' settings, batch size, or the "
            "machine and modelpress version that timed it); choose another --out folder, or pass --force to replace it"
        )
    foreign = _foreign_files(out, state.get("identity"))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputError(f"{out}: --force replaces a search's own files only, and these are not: {shown}; move them")
    for name in OURS:
        path = out / name
        for side in ("-journal", "-wal", "-shm") if name == "study.db" else ():
            out.joinpath(name + side).unlink(missing_ok=True)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _records(out: Path, identity: object) -> list[dict]:
    """The records of the folder's own study (none when it has none, or it is not one: nothing is listed)."""
    from compress.core.errors import ModelpressError
    from compress.search.study import Study, default_url

    if not isinstance(identity, dict) or not isinstance(identity.get("run"), dict) or not (out / "study.db").exists():
        return []
    try:
        return list(Study(default_url(out), identity, create=False).records(include_crashed=True).values())
    except ModelpressError:
        return []


def _foreign_files(out: Path, identity: object) -> list[str]:
    """Files under the search's folders that its own records do not list: trials/ holds the points
    the study's records name, work/<run>/ the files each run's run.json names, plots/ the search's plots."""
    listed = set(PLOTS)
    for record in _records(out, identity):
        for point in record["points"] if isinstance(record.get("points"), list) else []:
            if isinstance(point, dict) and isinstance(point.get("path"), str):
                listed |= {point["path"], point["path"] + ".data"}
    # claim() has refused links among these folders: what is below is the folder's own.
    foreign = [f"{name}/{f}" for name in ("trials", "plots") for f in _files(out / name) if f"{name}/{f}" not in listed]
    work = out / "work"
    for run in sorted(work.iterdir()) if work.is_dir() else []:
        info = read_json(run / "run.json")
        files = info.get("files") if isinstance(info, dict) else None
        owned = {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()
        owned |= {folder.LOCK, folder.LOG, "run.json"} if owned else set()
        foreign += [f"work/{run.name}/{f}" for f in folder.relative_files(run) if f not in owned]
    return sorted(foreign)


def _files(root: Path) -> set[str]:
    return folder.relative_files(root) if root.is_dir() else set()
