"""Atomic writes: a file is either complete or absent, never half-written."""

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from compress.core.errors import OutputError

# The run folder of the run in progress: where an internal error's traceback is saved (run.log).
_active_folder: list[Path] = []


def set_active_folder(folder: Path | None) -> None:
    _active_folder[:] = [folder] if folder is not None else []


def active_folder() -> Path | None:
    return _active_folder[0] if _active_folder else None


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then rename ``tmp`` over ``path`` (same folder, so rename is atomic)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual permissions
        os.replace(tmp, path)
    except Exception as exc:
        # safetensors and onnx raise their own types for a full disk; the OS message is the same
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            raise OutputError(
                f"{path}: disk full while writing; free space and rerun the same command (completed stages are kept)"
            ) from None
        if getattr(exc, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise OutputError(
                f"{path}: cannot write there any more ({exc.strerror or exc}); make the folder writable "
                "and rerun the same command (completed stages are kept)"
            ) from None
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def file_digest(path: Path) -> str:
    """sha256 of a file, read in blocks (weights files run to gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_duplicate(path: Path, others: list[Path]) -> Path | None:
    """Replace ``path`` by a hard link to the first of ``others`` holding the same bytes, so that a run
    folder stores them once; return that file, or None (no twin, or no hard links on this file system:
    the copy stays). Callers pass files of their own run folder only. Every write replaces a file by
    renaming a new one over it, so a later write never changes the twin through the link."""
    size = path.stat().st_size
    # a twin must be a regular file of the folder itself: never a link, whose target may lie outside
    plain = [o for o in others if not o.is_symlink() and o.is_file()]
    same_size = [o for o in plain if o.stat().st_size == size and not os.path.samefile(o, path)]
    digest = file_digest(path) if same_size else None
    twin = next((o for o in same_size if file_digest(o) == digest), None)
    if twin is None:
        return None
    link = path.with_name(f".{path.name}.link.tmp")
    try:
        link.unlink(missing_ok=True)
        os.link(twin, link, follow_symlinks=False)
        os.replace(link, path)  # atomic: the file is the copy or the link, never absent
    except OSError:
        link.unlink(missing_ok=True)
        return None
    return twin


def link_duplicates(paths: list[Path]) -> None:
    """Every file of ``paths`` that holds the same bytes as an earlier one becomes a hard link to it."""
    kept: list[Path] = []
    for path in paths:
        if link_duplicate(path, kept) is None:
            kept.append(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable(folder: Path) -> None:
    """Fail before any work when ``folder`` cannot be created or written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as exc:
        raise OutputError(
            f"{folder}: cannot write there ({exc.strerror or exc}); choose another --out folder"
        ) from None


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: Path, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any | None:
    """The JSON at ``path``, or None when it is absent or unreadable (an interrupted run). A link, a
    FIFO or a file over the bound of a record is refused (one line): the folder may come from elsewhere."""
    from compress.core.untrusted import MAX_RECORD_BYTES, read_bytes

    try:
        raw = read_bytes(path, MAX_RECORD_BYTES, "record")
        return None if raw is None else json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
