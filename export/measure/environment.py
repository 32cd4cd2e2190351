"""The machine and library versions a report was measured with."""

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = (
    "modelpress",
    "torch",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch-pruning",
    "bitsandbytes",
    "numpy",
)


def cpu_model() -> str:
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


def package_version(package: str) -> str | None:
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


GPU_NOT_MEASURED = "GPU: not measured (no CUDA device)"


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def _gpu() -> dict:
    import onnxruntime
    import torch

    if not torch.cuda.is_available():
        return {"available": False, "note": GPU_NOT_MEASURED}
    return {
        "available": True,
        "name": torch.cuda.get_device_name(0),
        "driver": _nvidia_driver(),
        "cuda": torch.version.cuda,
        "onnxruntime_cuda": "CUDAExecutionProvider" in onnxruntime.get_available_providers(),
    }


def device_name(device: str) -> str:
    """The machine a latency entry was measured on: the CPU model, or the GPU's name."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return cpu_model()


def collect_environment() -> dict:
    from export.onnx.runtime import default_threads

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": default_threads(),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in PACKAGES},
        "git_commit": _git_commit(),
        "gpu": _gpu(),
    }
