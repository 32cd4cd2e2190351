"""A search folder: which files are a search's, and whether a folder may receive this search.

``search.json`` records the search's inputs (its identity); a rerun with the same inputs resumes,
other inputs are refused unless ``--force`` replaces the search's own files (and nothing else).
"""

import shutil
from pathlib import Path

from compress.errors import OutputError
from compress.io import read_json

STATE = "search.json"
# What a search folder holds, all written by the search: a folder holding these without our
# search.json is someone else's, and is refused.
OURS = (STATE, "trials.jsonl", "report.md", "recipe.yaml", "environment.json", "trials", "work", "plots")


def claim(out: Path, identity: dict, force: bool) -> None:
    """Refuse a folder holding another search (other model, data, recipe or batch size) or other files."""
    state = read_json(out / STATE)
    if state is None:
        foreign = sorted(name for name in OURS if (out / name).exists())
        if foreign:
            raise OutputError(
                f"{out}: holds {', '.join(foreign)} but no {STATE} of a search; choose another --out folder"
            )
        return
    if state.get("identity") == identity:
        return
    if not force:
        raise OutputError(
            f"{out}: holds a search of other inputs (model, data, recipe passes' settings or batch size); "
            "choose another --out folder, or pass --force to replace it"
        )
    for name in OURS:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
