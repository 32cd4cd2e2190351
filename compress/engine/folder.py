"""Run-folder ownership: one run per folder, an OS lock while it runs, and only our own files touched.

A run folder records the files modelpress wrote in ``run.json`` (``files``). modelpress writes,
replaces and deletes only those: a folder holding other files where modelpress would write is
refused with their list, and ``--force`` clears only modelpress's files, never a locked folder.
"""

import errno
import fcntl
import os
import shutil
from pathlib import Path

from compress.core.errors import InputError, OutputError
from compress.core.io import read_json
from compress.core.untrusted import escape, no_link, open_lock, regular
from compress.engine.stages import read_stages, stage_folders

LOCK = ".modelpress.lock"
# What a run writes: these top-level files, and everything under these folders.
TOP_FILES = ("recipe.yaml", "run.json", "report.json", "report.md", "report.html", "manifest.json")
# run.log is only appended to (console tee, internal-error tracebacks): never a collision, never removed.
LOG = "run.log"
FOLDERS = ("stages", "artifacts", "plots", "scratch")
# Reproduced by every run from its stages: cleared so the report lists exactly this run's artifacts.
OUTPUTS = ("artifacts", "plots", "report.json", "report.md", "report.html", "manifest.json")

_held: dict[Path, int] = {}  # folder -> fd of its lock file, open for the whole run


def lock(folder: Path) -> None:
    """Hold an exclusive OS lock on ``folder`` (released by the OS if this process dies)."""
    key = folder.resolve()
    if key in _held:
        return
    # Never through a link or onto a FIFO: a folder from elsewhere may plant one to have the pid written
    # over a user's file, or to block this run forever.
    fd = open_lock(folder / LOCK)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise OutputError(
                f"{folder}: another modelpress run is using this folder (pid {holder}); "
                "wait for it to finish, or choose another --out folder"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held[key] = fd


def unlock(folder: Path) -> None:
    fd = _held.pop(folder.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing releases the flock; the file stays (removing it would race a waiter)


def relative_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()}


def _ours(path: str) -> bool:
    return path in TOP_FILES or path.split("/", 1)[0] in FOLDERS


def owned_files(folder: Path) -> set[str]:
    """The files of ``folder`` that modelpress wrote: listed in run.json, or in its layout under a run.json
    of ours (an interrupted run lists fewer files than it left)."""
    info = read_json(folder / "run.json")
    if not isinstance(info, dict) or "identity" not in info:
        return set()
    listed = {f for f in info.get("files", []) if isinstance(f, str)}
    return listed | {f for f in relative_files(folder) if _ours(f)}


def check_collisions(folder: Path) -> None:
    """Refuse a folder holding files modelpress did not write where it would write."""
    foreign = sorted(f for f in relative_files(folder) - owned_files(folder) if _ours(f))
    if foreign:
        shown = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise OutputError(
            f"{folder}: holds files modelpress did not write and would replace ({shown}); "
            "choose another --out folder (an empty one, or one of an earlier modelpress run)"
        )


def remove_ours(folder: Path, names: tuple[str, ...]) -> None:
    """Remove these top-level files / folders of ours (run.json lists only what modelpress wrote)."""
    owned = owned_files(folder)
    for name in names:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            if all(str(p.relative_to(folder)) in owned for p in path.rglob("*") if p.is_file()):
                shutil.rmtree(path)
        elif str(name) in owned:
            path.unlink(missing_ok=True)


def check_layout(folder: Path) -> None:
    """Refuse a run folder whose own subfolders (or stage folders) are links or files: every path
    modelpress opens under them would leave the folder. Names of stages are checked as names."""
    for name in FOLDERS:
        no_link(folder / name, f"{name}/ of a run folder")
    stage_folders(folder)


def read_run_folder(folder: Path) -> dict:
    """The run.json of a run folder to read back (``report``, ``compress.load``), after its layout and
    recipe.yaml are checked: no link, no FIFO, nothing leading outside the folder."""
    run_info = read_json(folder / "run.json")
    if not isinstance(run_info, dict) or regular(folder / "recipe.yaml", "recipe.yaml") is None:
        raise InputError(
            f"{escape(folder)}: not a modelpress run folder (no run.json/recipe.yaml); run 'modelpress run' first"
        )
    check_layout(folder)
    read_stages(folder)  # every stage record checked now, before anything is measured or written
    return run_info


def files_written(folder: Path) -> list[str]:
    """Every file of ours in ``folder`` now, for run.json."""
    return sorted(f for f in relative_files(folder) if _ours(f) or f == LOG)
