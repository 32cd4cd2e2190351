"""Progress a person can follow on the steps that take seconds to minutes (distillation, calibration,
export, quantization, timing, search trials).

On a terminal: a rich progress bar (a spinner where the step has no count) with the elapsed time and,
where the count is known, an ETA; it disappears when the step ends (``transient``), so the lines that
stay are modelpress's results. Not on a terminal (a pipe, a CI log): no bar, and one plain line when a
step took longer than ``PLAIN_AFTER_S``, saying how long. Under ``-q``: nothing. rich draws the bar on
its own thread from the console the log prints through, so log lines printed meanwhile appear above it.
"""

import contextlib
import time
from collections.abc import Callable, Iterator

PLAIN_AFTER_S = 5.0  # a step shorter than this gets no plain line: it would only add noise to a log


def _shown() -> bool:
    from compress.core import log
    from compress.core.distributed import is_main

    return is_main() and not log.is_quiet()


def _columns(total: int | None) -> tuple:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if total is None:
        return (SpinnerColumn(), TextColumn("  {task.description}"), TimeElapsedColumn())
    return (
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """Show ``description`` while the block runs; yields ``update(advance=1, description=None, completed=None)``."""
    from compress.core.log import console

    if not _shown():
        yield lambda *args, **kwargs: None
        return
    start = time.perf_counter()
    if not console.is_terminal:
        yield lambda *args, **kwargs: None
        seconds = time.perf_counter() - start
        if seconds > PLAIN_AFTER_S:
            from compress.core import log

            log.info(f"  {description}: {seconds:.0f} s")
        return
    from rich.progress import Progress

    # No redirection of sys.stdout/stderr: run.log holds third-party output, the bar must not take it back.
    options = {"console": console, "transient": True, "redirect_stdout": False, "redirect_stderr": False}
    with Progress(*_columns(total), **options) as bar:
        task = bar.add_task(description, total=total)

        def update(advance: int = 1, description: str | None = None, completed: int | None = None) -> None:
            fields = {"description": description} if description else {}
            if completed is not None:
                bar.update(task, completed=completed, **fields)
            else:
                bar.update(task, advance=advance, **fields)

        yield update
