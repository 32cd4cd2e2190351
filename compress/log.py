"""Progress messages on stderr through rich, so stdout stays free for results (rank 0 only under torchrun)."""

from rich.console import Console

console = Console(stderr=True, highlight=False)


def _main_process() -> bool:
    from compress.distributed import is_main

    return is_main()


def info(message: str) -> None:
    if _main_process():
        console.print(message)


def warn(message: str) -> None:
    if _main_process():
        console.print(f"[yellow]warning:[/yellow] {message}")
