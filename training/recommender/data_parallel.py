"""How the job's processes share the work: one process, or one per GPU under ``torchrun``.

``torchrun`` (which the SageMaker PyTorch container starts, one process per GPU of every
host, when the job has the ``sagemaker_torch_distributed_enabled`` hyperparameter) sets
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` plus the rendezvous address. Without them the job
is a single plain process and no process group is created. With them, processes talk over
NCCL on GPUs and gloo on the CPU; rank 0 is the leader, the only process that reads
checkpoints, prints metrics and writes files.

Training is data-parallel as with PyTorch's ``DistributedDataParallel``: every process holds
the whole model, trains on its own shard of each step's pairs, and before each optimizer step
all processes replace their gradients with the mean over the processes, so they take the same
step and stay identical. ``DistributedDataParallel`` itself is not used: it all-reduces dense
gradients, which for embeddings means the whole member and title tables on every step, a
cost that grows with the data, and its sparse-gradient mode needs gloo (PyTorch has no
general sparse all-reduce over NCCL). :func:`average_gradients` exchanges only the rows each
process's batch touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import distributed

_T = TypeVar("_T")


class LayoutError(Exception):
    """Raised when the process layout from the environment is unusable."""


@dataclass(frozen=True)
class Layout:
    """This process's place among the job's processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def layout_from_env(env: Mapping[str, str] = os.environ) -> Layout:
    """Return the layout ``torchrun`` describes in ``env``, or a single process without it."""
    try:
        layout = Layout(
            rank=int(env.get("RANK", "0")),
            local_rank=int(env.get("LOCAL_RANK", "0")),
            world_size=int(env.get("WORLD_SIZE", "1")),
        )
    except ValueError as exc:
        raise LayoutError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers: {exc}") from None
    if not (layout.world_size >= 1 and 0 <= layout.rank < layout.world_size):
        raise LayoutError(f"RANK {layout.rank} is not in 0..WORLD_SIZE-1 ({layout.world_size})")
    return layout


def select_device(layout: Layout, num_gpus: int) -> torch.device:
    """The GPU of this process's ``LOCAL_RANK`` when GPUs are asked for and present, else the CPU.

    Raises :class:`LayoutError` when a process has no GPU of its own: every process of a host
    would otherwise share GPU 0 while the rest sit idle.
    """
    if num_gpus <= 0 or not torch.cuda.is_available():
        return torch.device("cpu")
    visible = torch.cuda.device_count()
    if layout.local_rank >= visible:
        raise LayoutError(
            f"process LOCAL_RANK {layout.local_rank} has no GPU of its own ({visible} visible); "
            "start one process per GPU"
        )
    return torch.device("cuda", layout.local_rank)


def start(layout: Layout, device: torch.device) -> None:
    """Join the process group (NCCL on GPUs, gloo on the CPU) when there is more than one."""
    if not layout.is_distributed:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
        distributed.init_process_group("nccl", device_id=device)
    else:
        distributed.init_process_group("gloo")


def stop(layout: Layout) -> None:
    """Leave the process group together, so that a later run in the same interpreter starts
    afresh. The barrier keeps the other ranks from tearing their connections down while the
    leader still evaluates and writes the model (gloo aborts a process whose peer vanished)."""
    if layout.is_distributed and distributed.is_initialized():
        distributed.barrier()
        distributed.destroy_process_group()


def shard(count: int, layout: Layout) -> np.ndarray:
    """Return the positions of ``count`` items this process trains on.

    Positions are dealt round-robin, so the shards are disjoint and together cover every
    item; the last few shards are topped up with items from the start (at most
    ``world_size - 1`` items twice per epoch) so that all shards are equally long and every
    process takes the same number of steps.
    """
    padded = -(-count // layout.world_size) * layout.world_size
    return np.arange(layout.rank, padded, layout.world_size, dtype=np.int64) % count


def broadcast(value: _T, layout: Layout) -> _T:
    """Return the leader's ``value`` in every process (any picklable value)."""
    if not layout.is_distributed:
        return value
    holder: list[Any] = [value if layout.is_leader else None]
    distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def average_gradients(parameters: Sequence[torch.Tensor], layout: Layout) -> None:
    """Replace each 2-D parameter's sparse row gradient by its mean over all processes.

    Each process sends the rows its gradients hold and receives everyone else's, in one
    message for all parameters; every process sums the same rows in the same (rank) order,
    so all end with the same gradients.
    """
    if not layout.is_distributed:
        return
    gradients = [parameter.grad.coalesce() for parameter in parameters]
    counts = [gradient.indices().shape[1] for gradient in gradients]
    # Collectives need equal shapes: each parameter's block is padded to the most rows any
    # process has for it. A row is its index (exact in float64), then its values; padding
    # rows have index -1.
    longest = torch.tensor(counts, device=parameters[0].device)
    distributed.all_reduce(longest, op=distributed.ReduceOp.MAX)
    starts = np.cumsum([0, *longest.tolist()]).tolist()
    width = 1 + max(parameter.shape[1] for parameter in parameters)
    packed = torch.full((starts[-1], width), -1.0, dtype=torch.float64, device=parameters[0].device)
    for gradient, count, start in zip(gradients, counts, starts[:-1], strict=True):
        packed[start : start + count, 0] = gradient.indices()[0]
        packed[start : start + count, 1 : 1 + gradient.values().shape[1]] = gradient.values()
    parts = [torch.empty_like(packed) for _ in range(layout.world_size)]
    distributed.all_gather(parts, packed)
    for index, parameter in enumerate(parameters):
        received = torch.cat([part[starts[index] : starts[index + 1]] for part in parts])
        received = received[received[:, 0] >= 0]
        parameter.grad = torch.sparse_coo_tensor(
            received[:, 0].long().unsqueeze(0),
            (received[:, 1 : 1 + parameter.shape[1]] / layout.world_size).to(parameter.dtype),
            parameter.shape,
            # Bounds-checks the received row indices, a cost of the order of the batch.
            check_invariants=True,
        ).coalesce()


def average(value: float, layout: Layout, device: torch.device) -> float:
    """Return the mean of ``value`` over all processes."""
    if not layout.is_distributed:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    distributed.all_reduce(total)
    return float(total) / layout.world_size


def all_true(flag: bool, layout: Layout, device: torch.device) -> bool:
    """Return whether ``flag`` holds in every process."""
    if not layout.is_distributed:
        return flag
    agreed = torch.tensor([int(flag)], device=device)
    distributed.all_reduce(agreed, op=distributed.ReduceOp.MIN)
    return bool(agreed.item())
