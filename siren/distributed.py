"""Process sharding for the `*_ddp.py` scripts, on top of accelerate (no home-made layer).

Each process takes rows `rank, rank + world, rank + 2*world, ...` of the dataset, writes its
results to its own part file, and after a barrier the main process merges the parts back into
dataset order. The same code runs under `python script.py` (one process) and
`accelerate launch --num_processes K script.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def process_state(cpu: bool | None = None):
    """accelerate's PartialState: process_index, num_processes, device, wait_for_everyone().

    Without CUDA, PartialState() ignores the launcher's LOCAL_RANK/WORLD_SIZE and every process
    believes it is alone; `cpu=True` makes it join the launched processes over gloo instead
    (`accelerate launch --multi_gpu --num_processes K` on a CPU-only machine). `cpu=None` picks
    that whenever CUDA is unavailable.
    """
    from accelerate import PartialState

    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    return PartialState(cpu=cpu)


def shard_positions(n_rows: int, rank: int, world: int) -> list[int]:
    """Dataset positions handled by process `rank` of `world` (strided, so lengths balance)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad rank {rank} of world {world}")
    return list(range(rank, n_rows, world))


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    return [items[i] for i in shard_positions(len(items), rank, world)]
