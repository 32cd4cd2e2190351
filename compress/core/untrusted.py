"""Files of a folder modelpress did not create this run: opened without following a link, only when
they are regular files, and read only up to a bound; names read from them checked and escaped.

A run or search folder may come from elsewhere (README, "Run folders from elsewhere"): any file in
it may be a symbolic link to one of the user's files (a write through it would land outside the
folder), a FIFO (a reader would block forever), a device, or far larger than anything modelpress
writes. Every open of such a file goes through here: ``lstat`` first (links and non-regular files
are refused before anything is opened, so a FIFO is never opened), then ``O_NOFOLLOW | O_NONBLOCK``
(a link swapped in between is refused by the kernel, and nothing blocks), then ``fstat`` again.
"""

import errno
import os
import re
import stat
from pathlib import Path

from compress.core.errors import InputError, OutputError

# JSON records (run.json, manifest.json, artifact records, search.json, a search's study.db): modelpress
# writes kilobytes; a bound far above that still stops a file built to exhaust memory.
MAX_RECORD_BYTES = 64 << 20
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOCK = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A name modelpress gives an artifact, stage or variant: a plain file name, no control characters.
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")
# C0/C1 control characters and the bidirectional overrides: they repaint or reorder a terminal line.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}
_KINDS |= {stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link", stat.S_IFREG: "a file"}


def escape(text: object) -> str:
    """``text`` with every control character written as ``\\xNN``: safe to print on a terminal or log."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], str(text))


def check_name(name: object, what: str, where: Path | str) -> str:
    """``name`` when it is a plain name (letters, digits, ``_ . + -``, at most 128, no leading dot),
    else one line refusing the folder that holds it."""
    if isinstance(name, str) and NAME.fullmatch(name):
        return name
    shown = escape(repr(name))[:80]
    raise InputError(
        f"{escape(where)}: {what} {shown} is not a plain name (letters, digits, _ . + -, at most 128 characters); "
        "refusing the folder: it was not written by modelpress"
    )


def _refusal(path: Path, mode: int, what: str, error=InputError, expected: str = "file") -> Exception:
    kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
    return error(
        f"{escape(path)}: {what} is {kind}; modelpress reads and writes only regular files and folders in a "
        f"folder, never through a link: replace it with the {expected} itself"
    )


def regular(path: Path, what: str = "file", error=InputError) -> os.stat_result | None:
    """``lstat`` of ``path`` when it is a regular file; None when absent; a link or any other kind refused."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"{escape(path)}: {what} cannot be read ({exc.strerror or exc}); check the folder") from None
    if not stat.S_ISREG(info.st_mode):
        raise _refusal(path, info.st_mode, what, error)
    return info


def no_link(path: Path, what: str = "folder", error=InputError) -> bool:
    """Whether ``path`` exists as a real folder (not a link to one); a link or a file there is refused."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        raise _refusal(path, info.st_mode, what, error, "folder")
    return True


def _opened(path: Path, flags: int, what: str, error, mode: int = 0o644) -> int:
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link (swapped in after lstat, or a loop)
            raise error(f"{escape(path)}: {what} is a symbolic link; replace it with the file itself") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise _refusal(path, info.st_mode, what, error)
    os.set_blocking(fd, True)
    return fd


def read_bytes(path: Path, limit: int, what: str = "file") -> bytes | None:
    """The bytes of the regular file ``path`` (None when absent), refused past ``limit`` bytes."""
    info = regular(path, what)
    if info is None:
        return None
    if info.st_size > limit:  # refused before a byte is read
        raise _too_big(path, what, limit)
    try:
        fd = _opened(path, _READ, what, InputError)
    except FileNotFoundError:
        return None
    # In blocks: read(limit + 1) would allocate the whole bound up front for every small record.
    chunks, total = [], 0
    with os.fdopen(fd, "rb") as handle:
        while chunk := handle.read(1 << 20):
            total += len(chunk)
            if total > limit:  # it grew since lstat
                raise _too_big(path, what, limit)
            chunks.append(chunk)
    return b"".join(chunks)


def _too_big(path: Path, what: str, limit: int) -> InputError:
    return InputError(
        f"{escape(path)}: {what} is over the {limit}-byte bound of what modelpress writes there; "
        "it was not written by modelpress: remove it or rerun"
    )


def open_read(path: Path, what: str = "file"):
    """A binary handle on the regular file ``path`` (it must exist), for readers that stream it."""
    if regular(path, what) is None:
        raise InputError(f"{escape(path)}: {what} is missing; rerun to write it again")
    return os.fdopen(_opened(path, _READ, what, InputError), "rb")


def _written(path: Path, flags: int, what: str) -> int:
    """A descriptor to write ``path`` through: a regular file with no other name. A hard link to a
    user's file is as much a way out of the folder as a symbolic one (modelpress never makes one there)."""
    regular(path, what, OutputError)
    fd = _opened(path, flags, what, OutputError)
    if os.fstat(fd).st_nlink > 1:
        os.close(fd)
        raise OutputError(
            f"{escape(path)}: {what} has another name (a hard link); modelpress writes only its own files: "
            "remove it and rerun"
        )
    return fd


def open_append(path: Path, what: str = "log"):
    """A text handle appending to ``path`` (created when absent): never through a link, never a FIFO."""
    return os.fdopen(_written(path, _APPEND, what), "a", encoding="utf-8")


def open_lock(path: Path) -> int:
    """A read-write descriptor on the lock file ``path`` (created when absent), a regular file only."""
    return _written(path, _LOCK, "lock file")


def inside(root: Path, relative: object, what: str) -> Path:
    """``root / relative``, refused (one line) when it is not a relative path staying inside ``root``."""
    path = Path(str(relative))
    base = root.resolve()
    if not isinstance(relative, str) or path.is_absolute() or ".." in path.parts or not relative:
        leaves = True
    else:
        leaves = not (base / path).resolve().is_relative_to(base)
    if leaves:
        shown = escape(repr(relative))[:200]
        raise InputError(f"{escape(root)}: {what} {shown} leaves the folder; refusing to read or write it")
    return root / path
