"""Progress messages on stderr through rich, so stdout stays free for results (rank 0 only under torchrun).

Verbosity: ``quiet`` prints warnings only, the default adds progress, ``verbose`` also lets
third-party output (Python warnings, logging, prints of Torch-Pruning and the exporters, C++
runtime messages) reach the terminal. ``run_log`` keeps all of it in ``run.log`` in the run folder.
``collect_warnings`` keeps the text of every warning printed during a run, for its report.
"""

import contextlib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path

from rich.console import Console

console = Console(stderr=True, highlight=False)
_state = {"quiet": False, "verbose": False, "log": None, "warnings": None}


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    _state["quiet"], _state["verbose"] = quiet, verbose


def is_quiet() -> bool:
    """``-q``, or inside ``quieted``: progress (lines and bars) stays off the terminal."""
    return bool(_state["quiet"])


@contextlib.contextmanager
def quieted():
    """Progress printed while inside goes to run.log only (warnings still print): the search's
    trials are whole runs, whose stage lines would bury the search's own progress lines."""
    previous = _state["quiet"]
    _state["quiet"] = True
    try:
        yield
    finally:
        _state["quiet"] = previous


def _main_process() -> bool:
    from compress.core.distributed import is_main

    return is_main()


def _to_log(text: str) -> None:
    if _state["log"] is not None:
        _state["log"].write(text + "\n")
        _state["log"].flush()


def traceback_to_log(header: str) -> None:
    """The exception being handled, in full, in run.log only (the console got its one line)."""
    import traceback

    _to_log(f"--- {header} ---\n{traceback.format_exc()}")


def _escaped(message: str) -> str:
    # Names read from a folder (artifacts, stages) reach these lines: no control character may
    # repaint the terminal or forge a line of run.log.
    from compress.core.untrusted import escape

    return "\n".join(escape(line) for line in str(message).split("\n"))


def info(message: str) -> None:
    message = _escaped(message)
    if _main_process():
        _to_log(Console().render_str(message).plain)
        if not _state["quiet"]:
            console.print(message)


def warn(message: str, collect: bool = True) -> None:
    """Print a warning (and keep it for the run's report). ``collect=False`` for one the report
    already holds in its own data (an artifact's warnings, its failure), which it derives afresh."""
    message = _escaped(message)
    if _main_process():
        plain = Console().render_str(message).plain
        _to_log("warning: " + plain)
        kept = _state["warnings"]
        if collect and kept is not None and plain.strip() not in kept:
            kept.append(plain.strip())
        console.print(f"[yellow]warning:[/yellow] {message}")


@contextlib.contextmanager
def collect_warnings():
    """Yield the list of every warning printed while inside, as printed (plain text, each once, in order).

    Scoped to one run: a collector opened inside another joins it, so the warnings of loading the recipe,
    model and data (before ``run`` opens its own) are kept with those of the passes and the export.
    """
    if _state["warnings"] is not None:
        yield _state["warnings"]
        return
    _state["warnings"] = collected = []
    try:
        yield collected
    finally:
        _state["warnings"] = None


def warnings_mark() -> int:
    """A position in the run's collected warnings, for ``warnings_since``."""
    return len(_state["warnings"]) if _state["warnings"] is not None else 0


def warnings_since(mark: int) -> list[str]:
    """The warnings collected after ``mark`` (a stage's, kept in its record so a resumed run repeats them)."""
    return list(_state["warnings"][mark:]) if _state["warnings"] is not None else []


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _pump(read_fd: int, log_file, terminal_fd: int, verbose: bool) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        for chunk in iter(lambda: pipe.read(65536), b""):
            log_file.write(chunk.decode(errors="replace"))
            log_file.flush()
            if verbose:
                os.write(terminal_fd, chunk)


def stream_handlers() -> list[logging.StreamHandler]:
    """Every StreamHandler on the root logger and the named ones (files included)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [h for lg in loggers for h in getattr(lg, "handlers", []) if isinstance(h, logging.StreamHandler)]


def reopen_closed_handlers() -> None:
    """Point log handlers whose stream is closed at today's sys.stderr. A library (transformers) makes
    its StreamHandler on the sys.stderr of the moment; a host that replaced it (pytest's capture, a
    notebook cell) may have closed that stream since, and the next message would print "--- Logging
    error ---" with a traceback instead of the message."""
    for handler in stream_handlers():
        if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # not setStream: it flushes the old stream, which raises when closed


def _repoint_handlers(replaced: dict) -> None:
    """Log handlers a library created inside ``run_log`` (transformers makes its own on the sys.stderr of
    the moment) write to the stream that was there before, not to ours, which is closed on the way out
    (a later message printed "--- Logging error ---" with a traceback)."""
    for handler in stream_handlers():
        if handler.stream in replaced:
            handler.stream = replaced[handler.stream]  # not setStream: no flush of a stream going away


@contextlib.contextmanager
def run_log(out_dir: Path):
    """Append everything printed while inside to ``out_dir/run.log``; third-party output off the terminal.

    File descriptors 1 and 2 are redirected, not only ``sys.stdout``/``sys.stderr``, because
    ONNX Runtime and other C++ code write there directly. modelpress's own messages keep going
    to the terminal (and to the log) through ``console``. Append mode: other writers (internal
    error tracebacks) add to the same file.
    """
    if _state["log"] is not None or not _main_process():
        yield
        return
    from compress.core.untrusted import open_append

    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = open_append(out_dir / "run.log", "run.log")  # never through a link planted in the folder
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    read_fd, write_fd = os.pipe()
    pump = threading.Thread(target=_pump, args=(read_fd, log_file, saved[2], _state["verbose"]), daemon=True)
    pump.start()
    terminal = os.fdopen(os.dup(saved[2]), "w", buffering=1)
    # rich's ``file`` getter returns the sys.stderr of the moment when none was set; restoring that
    # object would pin the console to a stream a host (pytest, a notebook) has since replaced.
    previous_file = console._file
    console.file = terminal
    for fd in (1, 2):
        os.dup2(write_fd, fd)
    os.close(write_fd)
    _state["log"] = log_file
    # Python-level writers too, as a host (a notebook, pytest) may have replaced sys.stdout/stderr,
    # warnings.showwarning and the root logger's handlers with its own.
    previous = sys.stdout, sys.stderr, warnings.showwarning
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (closed below)
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    warnings.showwarning = _show_warning
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        _repoint_handlers({sys.stdout: previous[0], sys.stderr: previous[1]})
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(ValueError, OSError):
                stream.flush()
                stream.close()
        sys.stdout, sys.stderr, warnings.showwarning = previous
        for fd, original in saved.items():
            os.dup2(original, fd)  # closes the last write ends: the pump sees EOF
        pump.join(timeout=10)
        for original in saved.values():
            os.close(original)
        console.file = previous_file
        terminal.close()
        _state["log"] = None
        log_file.close()
