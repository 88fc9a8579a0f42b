"""Process sharding for the `*_ddp.py` scripts, on top of accelerate (no home-made layer).

Two ways to share rows among K processes; after a barrier the main process merges the parts
back into dataset order. The same code runs under `python script.py` (one process) and
`accelerate launch --num_processes K script.py`.

- `shard_positions`: process r takes rows r, r + K, r + 2K, ... and batches them itself. A row's
  batch-mates, and so its padding, then depend on K.
- `batches` + `my_batches`: the batches are formed once, from all rows, and process r takes
  batches r, r + K, ... Every batch holds the same rows, padded the same way, whatever K is, so
  the numbers computed for a row do not depend on the process count (stages 4a and 4b: 1 and 2
  processes give identical bytes). Padding changes a row's numbers in the last bits (a left-padded
  batch of other lengths moved stage 4b's states by up to 1.9e-6), which is why this matters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


def _check_rank(rank: int, world: int) -> None:
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad rank {rank} of world {world}")


def shard_positions(n_rows: int, rank: int, world: int) -> list[int]:
    """Dataset positions handled by process `rank` of `world` (strided, so lengths balance)."""
    _check_rank(rank, world)
    return list(range(rank, n_rows, world))


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    return [items[i] for i in shard_positions(len(items), rank, world)]


def batches(items: Sequence[T], size: int) -> Iterator[list[T]]:
    """Consecutive batches of `size` items (the last one shorter)."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def my_batches(all_batches: Sequence[list[T]], rank: int, world: int) -> list[tuple[int, list[T]]]:
    """(batch number, batch) of process `rank`: batch b goes to process b % world.

    The batches are the same for every process count, so a row is always computed with the same
    batch-mates; the process count only decides who computes it.
    """
    _check_rank(rank, world)
    return [(number, batch) for number, batch in enumerate(all_batches) if number % world == rank]
