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

Across machines (`accelerate launch --num_machines M --machine_rank m ...`) the processes of every
machine write their parts into one folder that the main process (rank 0) merges, so that folder
must be on a filesystem all machines mount. `check_shared_folder` proves it before any work, and
`require_files_on_main` before a merge: rank 0 must see every rank's file, else every process
stops with one line naming the ranks it cannot see, and nothing is merged.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from siren import SirenError

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


def longest_first_batches(lengths: Sequence[int], size: int, rank: int, world: int) -> list[tuple[int, list[int]]]:
    """(batch number, row positions) of process `rank`, for rows of these token `lengths`: every row
    sorted longest first (ties in row order), cut into batches of `size`, batch b to process
    b % world. Similar lengths share a batch, so little of it is padding; an out-of-memory batch
    shows at once, not hours in; and a row has the same batch-mates whatever the process count."""
    order = sorted(range(len(lengths)), key=lambda p: (-lengths[p], p))
    return my_batches(list(batches(order, size)), rank, world)


# ---------------------------------------------------------------------------------------------
# Several machines: the parts folder must be shared

# How long rank 0 waits for another machine's new file to show up before calling the folder
# unshared: an NFS client may answer from its cached directory listing for a while (attribute cache,
# `acdirmin`, 30 s by default). Only a refusal waits that long; a shared folder answers at once.
SHARED_WAIT_ENV = "SIREN_SHARED_FS_WAIT_S"
DEFAULT_SHARED_WAIT_S = 30.0


def shared_wait_seconds() -> float:
    value = os.environ.get(SHARED_WAIT_ENV, "").strip()
    try:
        return max(0.0, float(value)) if value else DEFAULT_SHARED_WAIT_S
    except ValueError:
        raise SirenError(f"{SHARED_WAIT_ENV} must be a number of seconds, got {value!r}") from None


def missing_ranks(paths: Sequence[Path], wait_s: float = 0.0, poll_s: float = 0.25) -> list[int]:
    """Ranks r whose `paths[r]` does not exist, after waiting up to `wait_s` for them to appear."""
    deadline = time.monotonic() + wait_s
    while True:
        missing = [rank for rank, path in enumerate(paths) if not Path(path).exists()]
        if not missing or time.monotonic() >= deadline:
            return missing
        time.sleep(poll_s)


def unshared_message(folder: Path, missing: Sequence[int]) -> str:
    ranks = ", ".join(str(r) for r in missing)
    return (f"{folder} is not one folder shared by every machine: rank 0 cannot see the files of rank(s) {ranks}, "
            "so their parts cannot be merged; give every machine the same output path on a shared filesystem "
            "(NFS, Lustre, ...)")


def from_main(state, value):
    """`value` as the main process has it, on every process (a collective: every process calls it)."""
    if state.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def require_files_on_main(state, paths: Sequence[Path], folder: Path) -> None:
    """Collective: every process stops with the same one-line error unless the main process sees
    `paths[r]`, the file rank r wrote, for every rank. Call it after a barrier."""
    missing = missing_ranks(paths, shared_wait_seconds()) if state.is_main_process else None
    missing = from_main(state, missing)
    if missing:
        raise SirenError(unshared_message(folder, missing))


def check_shared_folder(folder: str | os.PathLike, state) -> None:
    """Collective, before any work: each process writes a marker into `folder` (made if needed) and
    the main process must see every rank's. On a refusal each process removes the folders it made.

    Markers carry a token drawn by the main process, so a marker left by an earlier run is never
    taken for this run's. One process alone has nothing to check.
    """
    if state.num_processes == 1:
        return
    folder = Path(folder)
    made = [f for f in (folder, *folder.parents) if not os.path.lexists(f)]
    folder.mkdir(parents=True, exist_ok=True)
    token = from_main(state, secrets.token_hex(6))
    markers = [folder / f".shared-check-{token}-rank{rank}" for rank in range(state.num_processes)]
    mine = markers[state.process_index]
    mine.touch()
    state.wait_for_everyone()
    try:
        require_files_on_main(state, markers, folder)
    except SirenError:
        mine.unlink(missing_ok=True)
        for made_folder in made:  # deepest first
            try:
                made_folder.rmdir()
            except OSError:
                break
        raise
    mine.unlink(missing_ok=True)
