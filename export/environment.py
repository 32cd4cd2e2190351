"""The machine and library versions a report was measured with."""

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("modelpress", "torch", "onnx", "onnxruntime", "torch-pruning", "bitsandbytes", "numpy")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _gpu() -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "note": "GPU: not measured (no CUDA device)"}
    return {"available": True, "name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda}


def collect_environment() -> dict:
    from export.runtime import default_threads

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "git_commit": _git_commit(),
        "gpu": _gpu(),
    }
