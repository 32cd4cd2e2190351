"""Running a command with a pseudo-terminal as its stderr (where modelpress draws progress), stdout a pipe."""

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading
from dataclasses import dataclass

BAR = "━"  # rich's bar glyph: drawn only when a progress bar is
ESCAPE = "\x1b["  # a terminal control sequence (bars repaint their line with them)


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def run_on_terminal(args: list[str], env: dict, timeout: float, columns: int = 160) -> Finished:
    """``args`` run with stderr on a pseudo-terminal of ``columns`` columns; what each stream got."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env={**env, "TERM": "xterm"}
        )
        os.close(slave)
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        reader.join(timeout=10)
        os.close(master)
    stderr = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return Finished(process.returncode, stdout.decode(errors="replace"), stderr)
