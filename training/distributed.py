"""Data-parallel training under `torchrun` / `accelerate launch`: which process this is, and the few collective
steps the training loops need.

The launchers start one process per device and describe it in the environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT); nothing here starts processes (orchestration/launcher.py builds the launcher's command).
Without those variables every function is the single-process identity, so the loops keep one code path.

How the loops split the work (the same for the three trainings):
- **The batch** of a recipe is per process (the convention of the recipes it comes from): the global batch is
  `batch_size x processes`. Every rank draws the same global batch from an identically seeded sampler and builds
  only its contiguous share (`part`), so the sampler's state is the same on every rank and is one stream whatever
  the number of processes: a checkpoint written by 2 processes resumes on 1 or 4.
- **Gradients** are averaged by DistributedDataParallel during `backward`; with equal shares the average of the
  shares' mean losses is the global batch's mean loss, so N processes at `batch_size` b train as one process at
  N x b. The learning rate is not rescaled for the larger batch (say so in the recipe if you scale it).
- **Frozen modules** (`requires_grad=False`, e.g. Stage 1's front half, the anonymizer's base UNet) are
  outside DDP's buckets: DDP registers only parameters that require gradients.
- **Only rank 0** writes checkpoints, MLflow records and published outputs; the others train and return.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def part(self, per_process: int) -> tuple[int, range]:
        """(global batch size, this rank's contiguous positions in it) for `per_process` items per rank."""
        return per_process * self.world, range(self.rank * per_process, (self.rank + 1) * per_process)


def current() -> Rank:
    """This process's place in the job, from the launcher's environment (a single process without one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Rank()
    return Rank(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_for(rank: Rank, device: torch.device) -> torch.device:
    """One GPU per process: LOCAL_RANK picks it; CPU stays CPU."""
    if device.type == "cuda" and rank.distributed:
        torch.cuda.set_device(rank.local_rank)
        return torch.device("cuda", rank.local_rank)
    return device


def init(rank: Rank, device: torch.device, timeout_s: float) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU). A rank that dies leaves the others blocked in a
    collective; the group's timeout turns that into an error after `timeout_s`, and torchrun stops the job
    as soon as one worker exits non-zero."""
    if not rank.distributed or torch.distributed.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, timeout=timedelta(seconds=timeout_s),
                                         **({"device_id": device} if backend == "nccl" else {}))


def timeout_s() -> float:
    """The process group's timeout, passed by the launcher (orchestration/launcher.py) as AUBERGINE_DIST_TIMEOUT_S."""
    return float(os.environ.get("AUBERGINE_DIST_TIMEOUT_S", "600"))


def wrap(model: torch.nn.Module, rank: Rank, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around `model` when there is more than one process; the module itself otherwise.
    Call after freezing: DDP buckets the parameters that require gradients at construction."""
    if not rank.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=True)


def describe(rank: Rank, device: torch.device, per_process: int) -> str:
    """The run label a distributed training carries (train.json, MLflow)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    return f"{rank.world} processes ({backend}), global batch {per_process * rank.world} = {per_process} per process"


def mean_over_ranks(values: dict[str, float], rank: Rank, device: torch.device) -> dict[str, float]:
    """Logged losses as the mean over the ranks that have them (what the global batch scored), not rank 0's alone.
    Gathered as objects, because a rank may lack a term (the anonymizer's identity loss without a face in its
    share); called at logging steps only."""
    if not rank.distributed:
        return values
    gathered: list[dict[str, float]] = [{} for _ in range(rank.world)]
    torch.distributed.all_gather_object(gathered, values)
    keys = sorted({k for g in gathered for k in g})
    return {k: sum(g[k] for g in gathered if k in g) / sum(1 for g in gathered if k in g) for k in keys}


def share_of_total(value: torch.Tensor, rank: Rank) -> torch.Tensor:
    """The global batch's sum of `value` divided by the number of ranks: the denominator that turns a rank's
    weighted sum into its part of the global weighted mean (DDP then averages the ranks)."""
    if not rank.distributed:
        return value
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total / rank.world


def average_gradients(params, rank: Rank) -> None:
    """All-reduce (mean) the gradients of `params` after `backward`, for a loop that cannot hand its module to DDP:
    the anonymizer switches LoRA adapters inside a step, so some adapters get no gradient on a rank (DDP's reducer
    would need find_unused_parameters). A missing gradient counts as zero, as it does in a single process."""
    if not rank.distributed:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(rank.world)


def barrier(rank: Rank) -> None:
    if rank.distributed:
        torch.distributed.barrier()


def finish(rank: Rank) -> None:
    """Leave the process group (a clean exit; torchrun waits for every worker)."""
    if rank.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
