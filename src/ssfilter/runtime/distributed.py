"""Multi-process helpers on :mod:`torch.distributed` for ``torchrun`` launches (DDP training, sharded filter).

``torchrun --nproc_per_node=N -m ssfilter train ...`` starts N copies of the command with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment.
:func:`init_distributed` turns that into an initialised default process group (NCCL when the device is a
CUDA GPU, which is then ``cuda:LOCAL_RANK``; Gloo on the CPU). Without those variables, or with
``WORLD_SIZE=1``, every helper here is a cheap no-op for a single process, so the same code paths serve
both cases.

:func:`derive_seed` makes random streams a pure function of integer keys (seed, iteration, position in the
global batch, ...), which is how training and dataset filtering stay independent of how the work is split
across processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "cleanup",
    "derive_seed",
    "env_local_rank",
    "env_world_size",
    "gather_rows",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "launched_distributed",
    "rank",
    "session",
    "shard_bounds",
    "world_size",
]


def env_world_size() -> int:
    """``WORLD_SIZE`` set by ``torchrun`` (1 when absent)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def env_local_rank() -> int:
    """``LOCAL_RANK`` set by ``torchrun``: this process's index on its node (0 when absent)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_distributed() -> bool:
    """True when this process is one of several started by ``torchrun`` (``WORLD_SIZE > 1``)."""
    return env_world_size() > 1 and "RANK" in os.environ


def is_distributed() -> bool:
    """True when a default process group with more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Global rank: from the process group once initialised, else from ``RANK`` (0 for a single process)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched_distributed() else 0


def world_size() -> int:
    """Number of processes: from the process group once initialised, else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and prints."""
    return rank() == 0


def init_distributed(device: torch.device | str) -> torch.device:
    """Join the ``torchrun`` process group if launched by it; return the device this process must use.

    Idempotent. Outside ``torchrun`` (or with ``WORLD_SIZE=1``) nothing is initialised and ``device`` is
    returned unchanged. Under ``torchrun`` a CUDA device becomes ``cuda:LOCAL_RANK`` (made the current
    device) and the backend is NCCL; a CPU device uses Gloo. The rendezvous reads ``MASTER_ADDR`` /
    ``MASTER_PORT`` / ``RANK`` / ``WORLD_SIZE`` from the environment (``env://``).

    Args:
        device: The device the run asked for (``cpu``, ``cuda`` or ``cuda:K``).

    Returns:
        The device of this process.
    """
    dev = torch.device(device)
    if not launched_distributed():
        return dev
    if dev.type == "cuda":
        dev = torch.device("cuda", env_local_rank())
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        if dev.type == "cuda":
            dist.init_process_group(backend="nccl", init_method="env://", device_id=dev)
        else:
            dist.init_process_group(backend="gloo", init_method="env://")
    return dev


def cleanup(wait: bool = False) -> None:
    """Destroy the default process group if one is initialised (end of a ``torchrun`` command).

    Args:
        wait: First wait for every process (after a command that succeeded everywhere, so no process
            tears the group down while another still finishes its part, e.g. rank 0 writing files).
            Leave it off after an error: the other processes may be inside another collective.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Context that destroys the process group on exit, waiting for all processes when no error occurred."""
    try:
        yield
    except BaseException:
        cleanup(wait=False)
        raise
    cleanup(wait=True)


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; returned unchanged in a single process).

    Args:
        obj: The object to send (only rank ``src``'s value matters).
        src: Sending rank.
    """
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process).

    Tensors inside ``obj`` should be on the CPU (they are unpickled on the receiving rank as they were sent).

    Args:
        obj: This rank's picklable object.
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over all ranks, as a new tensor (``tensor`` is left untouched).

    Args:
        tensor: This rank's values, on the process group's device (a CUDA tensor under NCCL).
    """
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def gather_rows(tensor: Tensor, rows: int, fill: float = 0.0) -> Tensor:
    """Every rank's ``tensor`` padded to ``rows`` rows with ``fill``, concatenated in rank order.

    Collective: every rank must call it with the same ``rows`` and trailing shape. No gradient flows.

    Args:
        tensor: This rank's ``[n, ...]`` values, ``n <= rows`` (``n`` may differ between ranks, even be 0).
        rows: Common padded length (at least the largest ``n`` of any rank).
        fill: Value of the padding rows.

    Returns:
        ``[world_size * rows, ...]``; in a single process ``tensor`` padded to ``rows``.
    """
    n = tensor.shape[0]
    if n > rows:
        raise ValueError(f"gather_rows: {n} rows do not fit the padded length {rows}")
    x = tensor.detach()
    if n < rows:
        x = torch.cat([x, x.new_full((rows - n, *x.shape[1:]), fill)])
    x = x.contiguous()
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x)
    return torch.cat(parts)


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank_``'s contiguous share of ``n`` items (sizes differ by at most 1).

    Args:
        n: Number of items.
        rank_: The rank.
        world: Number of ranks.
    """
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"rank {rank_} is not in a world of {world}")
    return rank_ * n // world, (rank_ + 1) * n // world


def derive_seed(*keys: int) -> int:
    """A 63-bit seed that is a pure, well-mixed function of integer ``keys`` (BLAKE2b of their bytes).

    Used to give every random stream a fixed identity -- e.g. ``(seed, tag, iteration, position)`` -- so
    results do not depend on the order in which streams are consumed or on which process consumes them.

    Args:
        *keys: Integers (any sign, up to 127 bits).
    """
    data = b"".join(int(k).to_bytes(16, "little", signed=True) for k in keys)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
