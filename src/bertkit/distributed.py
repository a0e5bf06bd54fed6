"""PyTorch's own distributed engine, as launched by torchrun: rank helpers and reductions.

With no torchrun environment everything here degrades to a single process, so the training loop
calls these helpers unconditionally.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: str = "auto") -> World:
    """Join the process group torchrun describes in the environment: NCCL when the processes train
    on GPUs, gloo on the CPU (also `--device cpu` on a machine that has CUDA). device: --device."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return World()
    world = World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if world.world_size > 1 and not dist.is_initialized():
        on_gpu = device_for(world, device).type == "cuda"
        if on_gpu:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if on_gpu else "gloo")
    return world


def device_for(world: World, spec: str = "auto") -> torch.device:
    """The device a training process runs on. auto: under torchrun one GPU per local rank (cuda:
    local_rank) when there is CUDA, else the CPU (MPS is left to an explicit --device mps: its
    float64 and fused-kernel gaps are not worth a silent switch). A named device is taken as given
    (resolve_device checks the machine has it); "cuda" still means the local rank's GPU."""
    from bertkit.devices import resolve_device

    if spec == "auto":
        return torch.device("cuda", world.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", world.local_rank)
    return device


def all_reduce_sum(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum a tensor over all processes (in place) and return it. NCCL reduces GPU tensors only: a CPU
    tensor (the loop's counts and metric sums) goes through this process's GPU and back."""
    if not world.distributed:
        return values
    if values.device.type == "cpu" and dist.get_backend() == "nccl":
        on_gpu = values.to(torch.device("cuda", world.local_rank))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return values.copy_(on_gpu)
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def current_world() -> World:
    """The World of the process group already joined (by `init`), or one process: for code that is
    handed a model but not the World, such as a loss that gathers across processes."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def gather_rows(x: torch.Tensor, world: World) -> tuple[torch.Tensor, int]:
    """(N_r, D) rows of every process r, concatenated in rank order, and where this process's rows
    start. The gradient flows back to every process's own rows (torch.distributed.nn's all_gather
    sums, in its backward, what every process's loss sends to each slice), so a loss over the
    gathered rows trains as one big batch would. Processes may hold different numbers of rows:
    each is padded to the largest for the collective, then cut back."""
    if not world.distributed:
        return x, 0
    import torch.distributed.nn.functional as dist_nn

    sizes = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(sizes) for _ in range(world.world_size)]
    dist.all_gather(counts, sizes)
    n = [int(c.item()) for c in counts]
    padded = torch.nn.functional.pad(x, (0, 0, 0, max(n) - x.shape[0]))  # (N_max, D)
    parts = dist_nn.all_gather(padded.contiguous())
    rows = torch.cat([part[:k] for part, k in zip(parts, n)])  # (sum N_r, D)
    return rows, sum(n[:world.rank])


def all_gather_objects(obj, world: World) -> list:
    if not world.distributed:
        return [obj]
    out: list = [None] * world.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
