"""Two CPU processes with gloo under torchrun: training runs, ranks agree, quality matches one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from tests.compress.passes.test_distill import agreement

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = """
import sys, torch
import compress
from compress.models.data import TaskData
from compress.core.distributed import rank
from tests.tiny_models import mlp, vector_data

teacher = mlp()
batches = [(x, teacher(x).argmax(-1)) for x, _ in vector_data(batches=8, batch_size=16).eval]
student = mlp()
with torch.no_grad():
    student.fc1.weight.add_(torch.randn(student.fc1.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
recipe = {"name": "ddp", "export": {"enabled": False}, "passes": [{"pass": "distill", "epochs": 40, "lr": 1.0e-2,
          "warmup_ratio": 0.0, "teacher": {"factory": "tests.tiny_models:mlp"}}]}
result = compress.run(student, recipe, TaskData(eval=batches, train=batches), out_dir=sys.argv[1])
torch.save(result.model.state_dict(), f"{sys.argv[1]}/final-rank{rank()}.pt")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, *args, cwd=ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *map(str, args),
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_two_gloo_processes_agree_and_match_one_process(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    for processes in (2, 1):
        result = launch(processes, script, tmp_path / f"p{processes}")
        assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / "p2" / f"final-rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    stage = json.loads(next((tmp_path / "p2" / "stages").glob("01-*/stage.json")).read_text())
    assert stage["record"]["processes"] == 2

    from compress.models.data import TaskData  # noqa: F401  (same data as the script, rebuilt here)
    from tests.tiny_models import mlp, vector_data

    teacher = mlp()
    batches = [(x, teacher(x).argmax(-1)) for x, _ in vector_data(batches=8, batch_size=16).eval]
    data = TaskData(eval=batches)

    def trained(state):
        model = mlp()
        model.load_state_dict(state)
        return agreement(model, data)

    single = trained(torch.load(tmp_path / "p1" / "final-rank0.pt"))
    assert single >= 0.95 and trained(rank0) >= single - 0.03


LAYERWISE_SCRIPT = """
import sys, torch
import compress
from compress.models.data import TaskData
from compress.core.distributed import rank
from tests.compress.passes.test_distill_layerwise import bert_encoder
from tests.tiny_models import token_data

student = bert_encoder(layers=2, seed=1)  # half the teacher's depth
teacher = {"factory": "tests.compress.passes.test_distill_layerwise:bert_encoder", "kwargs": {"layers": 4}}
recipe = {"name": "ddp-layerwise", "export": {"enabled": False}, "passes": [{"pass": "distill", "epochs": 2,
          "loss": "embedding_mse", "lr": 3.0e-3, "teacher": teacher}]}
data = token_data(batches=4)
result = compress.run(student, recipe, TaskData(eval=data.eval, train=data.train), out_dir=sys.argv[1])
torch.save(result.model.state_dict(), f"{sys.argv[1]}/final-rank{rank()}.pt")
"""


def test_layerwise_distillation_under_two_gloo_processes_keeps_ranks_equal(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(LAYERWISE_SCRIPT)
    result = launch(2, script, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"final-rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    record = json.loads(next((tmp_path / "stages").glob("01-*/stage.json")).read_text())["record"]
    assert record["layer_map"] == [1, 3] and record["processes"] == 2
    assert record["layerwise"]["relation_blocks"] == 2 and record["layerwise"]["map_source"] == "uniform"


def test_cli_under_torchrun_writes_once(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "name: ddp-cli\nmodel: {factory: 'tests.tiny_models:mlp'}\ndata: {factory: 'tests.tiny_models:vector_data'}\n"
        "passes:\n  - {pass: structured_prune, ratio: 0.5}\n  - {pass: distill, epochs: 2}\n"
        "report: {batch_sizes: [1], warmup: 1, iterations: 5, max_seconds: 0.5}\n"
    )
    out = tmp_path / "out"
    result = launch(2, "-m", "compress.cli", "run", recipe, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert [a["status"] for a in report["artifacts"]] == ["passed", "passed"]
    assert report["stages"][2]["record"]["processes"] == 2
    assert result.stdout.count("report.json") == 1  # rank 0 alone reports


class _Reduced(Exception):
    """Raised by the fake all-reduce once it has seen the tensor's device."""


def test_nccl_reduces_on_the_gpu_never_a_cpu_tensor(monkeypatch):
    """Under NCCL the loss and stop flags are all-reduced as device tensors: NCCL rejects CPU tensors."""
    import compress.core.distributed as dist

    devices = []

    def fake_all_reduce(tensor, *args, **kwargs):
        devices.append(tensor.device)
        raise _Reduced

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    # No GPU here: the meta device stands in for the current CUDA device.
    monkeypatch.setitem(dist.REDUCTION_DEVICES, "nccl", lambda: torch.device("meta"))
    try:
        dist.mean_across_ranks(1.0)
    except _Reduced:
        pass
    monkeypatch.setattr(torch.distributed, "get_backend", lambda *a: "gloo")
    try:
        dist.mean_across_ranks(1.0)
    except _Reduced:
        pass
    assert [d.type for d in devices] == ["meta", "cpu"]


def test_the_nccl_device_is_the_current_cuda_device():
    import compress.core.distributed as dist

    assert dist.REDUCTION_DEVICES["nccl"] is dist._current_cuda_device
