"""Data-parallel calibration with ``torchrun``: one process per device, sums merged by ``all_reduce``.

Every statistic eavss collects is a plain sum (:mod:`eavss.stats.accumulators`), so the merge of
the ranks' shards is exactly ``all_reduce(SUM)`` of the ``(L, G, NUM_FIELDS)`` float64
accumulator: results equal a single process's up to float64 rounding of the summation order.

Usage (the CLI does all of this when started under ``torchrun``)::

    torchrun --nproc_per_node=2 -m eavss.cli score --device cuda --out runs/score
    torchrun --nproc_per_node=2 -m eavss.cli score --device cpu --out runs/score   # gloo

    ctx = init_from_env("cuda")          # no-op (world 1) outside torchrun
    device = device_for_rank("cuda")     # "cuda:<LOCAL_RANK>"
    my_batches = shard(batches)          # every world-th batch, from this rank's index
    stats, info = collect_statistics(model, my_batches, distributed=True)   # all_reduce inside
    if is_main(): write(...)             # rank 0 writes

Backends: NCCL for CUDA devices, gloo for CPU. NVLink multicast (NVLS) is switched off by default
(``NCCL_NVLS_ENABLE=0``): it buys nothing for a few-kilobyte all_reduce and can disturb shared GPU
hosts.
"""

from __future__ import annotations

import datetime as _dt
import os
from typing import Sequence, TypeVar

import torch

from eavss.errors import EavssError

T = TypeVar("T")

_OWN_GROUP = False


def env_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the torchrun environment (``(0, 1, 0)`` outside it)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise EavssError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None
    return rank, world, local


def is_initialized() -> bool:
    """Whether a ``torch.distributed`` process group is up."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_distributed() -> bool:
    """Whether this process is one of several ranks of an initialised process group."""
    return is_initialized() and torch.distributed.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return torch.distributed.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 when not distributed)."""
    return torch.distributed.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the rank that prints and writes."""
    return rank() == 0


def device_for_rank(device: str) -> str:
    """The device this rank uses for ``device``: ``cuda`` -> ``cuda:<LOCAL_RANK>`` under torchrun.

    An explicit index (``cuda:1``) or a non-CUDA device is returned unchanged.
    """
    if device == "cuda" and env_rank()[1] > 1:
        return f"cuda:{env_rank()[2]}"
    return device


def init_from_env(device: str = "cpu", backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Initialise the process group from torchrun's environment, if there is one.

    Args:
        device: the device this job runs on (``cpu``, ``cuda``, ``cuda:N``); picks the backend
            (NCCL for CUDA, gloo otherwise) and, for CUDA, sets this rank's current device.
        backend: force a backend.
        timeout_s: collective timeout.

    Returns:
        True if this process is now one rank of several (``WORLD_SIZE`` > 1), False otherwise.

    Raises:
        EavssError: more ranks on this host than CUDA devices, or a failed initialisation.
    """
    global _OWN_GROUP
    _, world, local = env_rank()
    if world <= 1:
        return False
    if is_initialized():
        return True
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    cuda = device.startswith("cuda")
    if cuda:
        n = torch.cuda.device_count()
        if local >= n:
            raise EavssError(f"rank with LOCAL_RANK={local} has no GPU (this host has {n}); "
                             f"use torchrun --nproc_per_node<={n}")
        torch.cuda.set_device(local)
    be = backend or ("nccl" if cuda else "gloo")
    try:
        kw = {"device_id": torch.device("cuda", local)} if (cuda and be == "nccl") else {}
        torch.distributed.init_process_group(be, timeout=_dt.timedelta(seconds=timeout_s), **kw)
    except Exception as e:  # noqa: BLE001 - surface as a one-line user error
        raise EavssError(f"could not start the {be} process group from the torchrun environment: {e}") from e
    _OWN_GROUP = True
    return True


def shutdown() -> None:
    """Destroy the process group this module created (no-op otherwise)."""
    global _OWN_GROUP
    if _OWN_GROUP and is_initialized():
        torch.distributed.destroy_process_group()
    _OWN_GROUP = False


def shard(items: Sequence[T], rank_: int | None = None, world: int | None = None) -> list[T]:
    """This rank's share of ``items``: every ``world``-th item starting at ``rank``.

    Calibration batches come sorted by length (longest first), so striding gives every rank a
    similar number of tokens. With more ranks than items some ranks get none; they still take part
    in the ``all_reduce`` with zeros.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    if w < 1 or not 0 <= r < w:
        raise EavssError(f"bad shard: rank {r} of world {w}")
    return list(items[r::w])


def _collective_tensor(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """The tensor to hand to the backend (gloo reduces host tensors), and whether it is a copy."""
    if torch.distributed.get_backend() == "gloo" and t.device.type != "cpu":
        return t.to("cpu"), True
    return t, False


def all_reduce_(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place ``all_reduce`` of ``t`` across ranks (``op``: sum | max | min); no-op when not distributed."""
    if not is_distributed():
        return t
    ops = {"sum": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
           "min": torch.distributed.ReduceOp.MIN}
    buf, copied = _collective_tensor(t)
    torch.distributed.all_reduce(buf, op=ops[op])
    if copied:
        t.copy_(buf)
    return t


def all_reduce_numbers(values: dict[str, float], op: str = "sum", device: torch.device | str = "cpu") -> dict:
    """``all_reduce`` a dict of numbers (float64); returns a new dict. No-op when not distributed."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    all_reduce_(t, op)
    return {k: float(v) for k, v in zip(keys, t.tolist())}


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        torch.distributed.barrier()
