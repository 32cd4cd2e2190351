"""Running under torchrun: process group from the environment, rank checks, reductions.

``torchrun --nproc_per_node N -m compress.cli run recipe.yaml`` (or a script calling
``compress.run``) starts N processes; each runs the same recipe. Training passes wrap the
model in DistributedDataParallel and shard the train batches; only rank 0 writes stages,
artifacts and the report. Without torchrun every helper here is a no-op for one process.
"""

import os

import torch


def initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_from_environment() -> None:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPU); once.

    Under NCCL each rank binds the GPU of its LOCAL_RANK first: NCCL reduces tensors on the
    current device, and without this every rank would use GPU 0.
    """
    if initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.distributed.init_process_group(backend=backend)


def rank() -> int:
    return torch.distributed.get_rank() if initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if initialized() else 1


def is_main() -> bool:
    return rank() == 0


def _current_cuda_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


# The device a backend reduces on: NCCL only takes CUDA tensors (a CPU tensor fails at the
# first all-reduce); gloo takes CPU tensors.
REDUCTION_DEVICES = {"nccl": _current_cuda_device, "gloo": lambda: torch.device("cpu")}


def reduction_device() -> torch.device:
    """Where a tensor must live to be all-reduced by this process group's backend."""
    return REDUCTION_DEVICES.get(str(torch.distributed.get_backend()), REDUCTION_DEVICES["gloo"])()


def mean_across_ranks(value: float) -> float:
    """The mean of ``value`` over all ranks (itself for one process)."""
    if not initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=reduction_device())
    torch.distributed.all_reduce(tensor)
    return float(tensor) / world_size()


def barrier() -> None:
    if initialized():
        torch.distributed.barrier()


def shard(batches: list) -> list:
    """This rank's share of ``batches``; every rank gets the same count, so DDP never waits forever."""
    count = len(batches) // world_size()
    return batches[rank() :: world_size()][:count]


def average_gradients(parameters) -> None:
    """All-reduce the gradients of parameters that DDP does not own (e.g. distillation projections)."""
    if not initialized():
        return
    for parameter in parameters:
        if parameter.grad is not None:
            torch.distributed.all_reduce(parameter.grad)
            parameter.grad /= world_size()
