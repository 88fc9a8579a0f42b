"""Stage 4b: last-token hidden states of the teacher contexts (siren.teacher_contexts), streamed to
disk, and the teacher files.

`extract_teacher_states` sorts the selected rows by context length once, cuts them into batches
and gives batch b to process b % K, so every row is computed in the same padded batch whatever the
process count K: 1 and 2 processes give identical bytes (with per-process batches they differed by
up to 1.9e-6, from the padding). Hidden states stream to per-process `.npy` shards through plain
positioned writes (no mapping, so the resident memory does not grow with the file) and are merged
into one `[N, L, H]` file in dataset order, a bounded chunk at a time (`write_teacher_files`).
Stage 5 reads them back by dataset row with `TeacherStates`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from siren import SirenError
from siren.answer import ANSWER_OPEN
from siren.io import atomic_path
from siren.teacher_contexts import align_contexts, teacher_text

if TYPE_CHECKING:
    import torch

# Stage 4b's files; stage 5 reads them back through TeacherStates.
HIDDEN_NAME, INDEX_NAME = "teacher_hidden.npy", "teacher_index.npy"


# ---------------------------------------------------------------------------------------------
# Batches and the forward pass


def encode_left_padded(tokenizer, texts: Sequence[str]):
    """input_ids, attention_mask and position_ids of a left-padded batch.

    Position ids count real tokens only, so a padded row sees the same positions as it would
    alone; the model's default (0..T-1 over the padded width) would shift them.
    """
    if tokenizer.padding_side != "left":
        raise SirenError("the tokenizer must pad on the left so that the last column is every row's last token")
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    attention_mask = encoded["attention_mask"]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return encoded["input_ids"], attention_mask, position_ids


def last_token_hidden(model, input_ids, attention_mask, position_ids):
    """[B, L, H]: every transformer layer's output (hidden_states[1:]) at the last column.

    Hugging Face returns the last layer's entry after the final norm; stage 5 reads the student
    through the same call, so both sides agree.
    """
    import torch

    device = model.device
    with torch.no_grad():
        out = model(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
            position_ids=position_ids.to(device), output_hidden_states=True, use_cache=False, logits_to_keep=1,
        )
    return torch.stack([layer[:, -1, :] for layer in out.hidden_states[1:]], dim=1)



@contextlib.contextmanager
def scratch_folder(path: Path, state) -> Iterator[Path]:
    """A fresh working folder the processes share; the main process removes it, and the folders
    made for it that stayed empty, when the block ends, whether it succeeded or not. With several
    machines it must be one folder on a filesystem they all mount, else every process stops here
    (`siren.distributed.check_shared_folder`)."""
    from siren.distributed import check_shared_folder

    path = Path(path)
    made = [folder for folder in (path, *path.parents) if not os.path.lexists(folder)]
    if state.is_main_process:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    state.wait_for_everyone()
    try:
        check_shared_folder(path, state)
        yield path
    finally:
        if state.is_main_process:
            shutil.rmtree(path, ignore_errors=True)
            for folder in made[1:]:
                with contextlib.suppress(OSError):
                    folder.rmdir()


@dataclass(frozen=True)
class Extraction:
    """Where the shards of one extraction are and what they hold."""

    parts_dir: Path
    world: int
    selected: list[int]
    row_shape: tuple[int, int]
    dtype: str
    rows_here: int            # rows this process computed
    seconds: float            # this process's forward passes, no start-up

    @property
    def rows_per_s(self) -> float:
        return self.rows_here / max(self.seconds, 1e-9)

    def counts(self) -> dict:
        return {"processes": self.world, "layers": self.row_shape[0], "hidden_size": self.row_shape[1]}


def extract_teacher_states(model, tokenizer, rows: Sequence[dict], thinking: Sequence[dict], selected: Sequence[int], *,
                           state, parts_dir: Path, batch_size: int, save_dtype: str = "float32",
                           lengths: Sequence[int] | None = None) -> Extraction:
    """Every layer's hidden state at the last teacher-context token of each `selected` row, into
    this process's shard in `parts_dir`; returns when every process is done.

    `lengths` are the rows' teacher context lengths from `align_teacher_rows`; without them every
    process tokenizes every row here and refuses an unaligned one (the same message in every
    process, instead of one failing and the others waiting). The rows are sorted longest
    first, once for all processes: similar lengths share a batch (little padding), an
    out-of-memory batch shows up at once rather than hours in, and a batch is the same rows
    whatever the process count.
    """
    from tqdm import tqdm

    from siren.distributed import longest_first_batches

    selected = list(selected)
    if lengths is None:
        alignment = align_contexts(tokenizer, rows, thinking, selected)
        if alignment.unaligned:
            raise SirenError(f"rows {alignment.unaligned[:5]}: the teacher context does not end in the tokens of "
                             f"{ANSWER_OPEN!r} (leave them out with align_teacher_rows)")
        lengths = alignment.lengths
    if len(lengths) != len(selected):
        raise SirenError(f"internal error: {len(lengths)} context lengths for {len(selected)} rows")
    mine = [batch for _, batch in longest_first_batches(lengths, batch_size, state.process_index, state.num_processes)]
    slots = sorted(k for batch in mine for k in batch)  # this shard's rows, in dataset order
    slot_of = {k: slot for slot, k in enumerate(slots)}
    row_shape = (model.config.num_hidden_layers, model.config.hidden_size)
    shard_hidden, shard_index = shard_paths(parts_dir, state.process_index)
    np.save(shard_index, np.asarray([selected[k] for k in slots], dtype=np.int64))
    shard = NpyRows(shard_hidden, len(slots), row_shape, save_dtype, create=True)
    start = time.perf_counter()
    try:
        for batch in tqdm(mine, desc="teacher hidden", disable=not state.is_main_process):
            positions = [selected[k] for k in batch]
            texts = [teacher_text(tokenizer, rows[p], thinking[p]["reasoning"]) for p in positions]
            hidden = last_token_hidden(model, *encode_left_padded(tokenizer, texts)).float().cpu().numpy()
            if hidden.shape[1:] != row_shape:
                raise SirenError(f"the model returned hidden states of shape {hidden.shape[1:]}, expected {row_shape}")
            values = hidden.astype(save_dtype)
            finite = np.isfinite(values).reshape(len(batch), -1).all(1)
            if not finite.all():
                bad = sorted(int(rows[p]["extra_info"]["index"]) for p, ok in zip(positions, finite, strict=True) if not ok)
                raise SirenError(f"non-finite hidden states at rows {bad[:5]}"
                                 + (" (float16 overflow; use --save_dtype float32)" if save_dtype == "float16" else ""))
            for k, value in zip(batch, values, strict=True):
                shard.write(slot_of[k], value[None])
    finally:
        shard.close(sync=True)
    seconds = time.perf_counter() - start
    state.wait_for_everyone()
    return Extraction(Path(parts_dir), state.num_processes, selected, row_shape, save_dtype, len(slots), seconds)


def write_teacher_files(folder: Path, extraction: Extraction, rows: Sequence[dict]) -> tuple[Path, Path]:
    """Merge the shards into `folder`/teacher_hidden.npy (dataset order) and write teacher_index.npy."""
    hidden_path, index_path = Path(folder) / HIDDEN_NAME, Path(folder) / INDEX_NAME
    with atomic_path(hidden_path) as tmp:
        merge_hidden_shards(extraction.parts_dir, extraction.world, extraction.selected, extraction.row_shape,
                            extraction.dtype, tmp)
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray([int(rows[p]["extra_info"]["index"]) for p in extraction.selected],
                                       dtype=np.int64))
    return hidden_path, index_path


# ---------------------------------------------------------------------------------------------
# Resident memory, for the manifest and scripts/bench_hidden.py


# ---------------------------------------------------------------------------------------------
# Row-addressed .npy files written without a memory map, and the teacher files read back


class NpyRows:
    """A `.npy` file of shape [n, *row_shape], written and read a row range at a time.

    The header and size come from np.lib.format.open_memmap, so np.load(mmap_mode="r") reads the
    result; the rows go through os.pwrite/os.pread, which keeps nothing resident.
    """

    def __init__(self, path: Path, n_rows: int, row_shape: tuple[int, ...], dtype, create: bool) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.n_rows = n_rows
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        if create and n_rows == 0:  # a process with no rows: nothing to map
            np.save(self.path, np.empty((0, *self.row_shape), dtype=self.dtype))
        elif create:
            header = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=(n_rows, *self.row_shape))
            del header
        probe = np.load(self.path, mmap_mode="r") if n_rows else np.load(self.path)
        if probe.shape != (n_rows, *self.row_shape) or probe.dtype != self.dtype:
            raise SirenError(f"{self.path}: shape {probe.shape} {probe.dtype}, expected {(n_rows, *self.row_shape)} {self.dtype}")
        self.offset = probe.offset if n_rows else 0
        del probe
        self.fd = os.open(self.path, os.O_RDWR if create else os.O_RDONLY)

    def write(self, row: int, values: np.ndarray) -> None:
        """Write consecutive rows starting at `row`."""
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape[1:] != self.row_shape or row < 0 or row + len(values) > self.n_rows:
            raise ValueError(f"rows {row}..{row + len(values)} of shape {values.shape[1:]} do not fit {self.path}")
        data = values.tobytes()
        written = os.pwrite(self.fd, data, self.offset + row * self.row_bytes)
        if written != len(data):
            raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")

    def read(self, row: int, count: int) -> np.ndarray:
        data = os.pread(self.fd, count * self.row_bytes, self.offset + row * self.row_bytes)
        if len(data) != count * self.row_bytes:
            raise OSError(f"short read from {self.path}")
        return np.frombuffer(data, dtype=self.dtype).reshape(count, *self.row_shape)

    def close(self, sync: bool = False) -> None:
        if sync:
            os.fsync(self.fd)
        os.close(self.fd)


def shard_paths(parts_dir: Path, rank: int) -> tuple[Path, Path]:
    return parts_dir / f"rank{rank}.npy", parts_dir / f"rank{rank}_index.npy"


def merge_hidden_shards(parts_dir: Path, world: int, selected: Sequence[int], row_shape: tuple[int, int], dtype,
                        hidden_path: Path, chunk_bytes: int = 64 << 20) -> None:
    """Merge the per-process shards into `hidden_path`, rows in the order of `selected`.

    Each shard's index file lists the rows it holds, in dataset order; together the shards must
    hold every row of `selected` once. Output rows are gathered a chunk (`chunk_bytes`) at a time:
    within a chunk each shard contributes a contiguous run of its rows, read in one piece.
    """
    from siren.distributed import missing_ranks, shared_wait_seconds, unshared_message

    n = len(selected)
    # Never merge a partial set: every rank's shard must be here (another machine's shard is missing
    # when the folder is not shared; scratch_folder checks that up front, this is the last word).
    missing = missing_ranks([shard_paths(parts_dir, rank)[0] for rank in range(world)], shared_wait_seconds())
    if missing:
        raise SirenError(unshared_message(parts_dir, missing))
    output_position = {int(row): k for k, row in enumerate(selected)}
    shards, positions, seen = [], [], 0
    try:
        for rank in range(world):
            hidden, index = shard_paths(parts_dir, rank)
            found = np.load(index).tolist()
            where = np.asarray([output_position.get(int(row), -1) for row in found], dtype=np.int64)
            if (where < 0).any() or (np.diff(where) <= 0).any():
                raise SirenError(f"{index}: holds rows {found[:5]}..., not rows of the selection in dataset order")
            seen += len(found)
            shards.append(NpyRows(hidden, len(found), row_shape, dtype, create=False))
            positions.append(where)
        if seen != n or len(np.unique(np.concatenate(positions))) != n:
            raise SirenError(f"{parts_dir}: the shards hold {seen} rows, expected each of {n} rows once")
        out = NpyRows(hidden_path, n, row_shape, dtype, create=True)
        rows_per_chunk = max(1, chunk_bytes // max(1, out.row_bytes))
        try:
            for start in range(0, n, rows_per_chunk):
                stop = min(n, start + rows_per_chunk)
                block = np.empty((stop - start, *row_shape), dtype=out.dtype)
                for shard, where in zip(shards, positions, strict=True):
                    first, last = np.searchsorted(where, [start, stop])
                    if last > first:
                        block[where[first:last] - start] = shard.read(int(first), int(last - first))
                out.write(start, block)
        finally:
            out.close(sync=True)
    finally:
        for shard in shards:
            shard.close()


class TeacherStates:
    """Stage 4b's `teacher_hidden.npy` [n, L, H] (memory-mapped) looked up by dataset row index."""

    def __init__(self, hidden_path: str | os.PathLike, index_path: str | os.PathLike | None = None):
        import numpy as np

        hidden_path = Path(hidden_path)
        if hidden_path.is_dir():
            hidden_path = hidden_path / HIDDEN_NAME
        if not hidden_path.is_file():
            raise SirenError(f"missing teacher hidden states: {hidden_path} (run extract_last_hidden_ddp.py first)")
        index_path = Path(index_path) if index_path else hidden_path.with_name(INDEX_NAME)
        try:
            self.hidden = np.load(hidden_path, mmap_mode="r")
        except ValueError as err:
            raise SirenError(f"{hidden_path}: not a readable .npy array ({err})") from None
        if self.hidden.ndim != 3:
            raise SirenError(f"{hidden_path}: expected [rows, layers, hidden], got shape {self.hidden.shape}")
        self.path = hidden_path
        self.index_path = index_path if index_path.is_file() else None
        if self.index_path is not None:
            row_ids = np.asarray(np.load(self.index_path), dtype=np.int64)
            if row_ids.shape != (self.hidden.shape[0],):
                raise SirenError(
                    f"{self.index_path} has {row_ids.size} entries but {hidden_path} has {self.hidden.shape[0]} rows"
                )
            if len(np.unique(row_ids)) != len(row_ids):
                raise SirenError(f"{self.index_path}: a dataset row appears more than once")
        else:
            row_ids = np.arange(self.hidden.shape[0], dtype=np.int64)
        self.row_ids = row_ids
        self._position = {int(r): p for p, r in enumerate(row_ids)}

    @property
    def n_rows(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def n_layers(self) -> int:
        return int(self.hidden.shape[1])

    @property
    def hidden_size(self) -> int:
        return int(self.hidden.shape[2])

    def check_against(self, *, n_layers: int, hidden_size: int, n_dataset_rows: int) -> None:
        """Clear errors when the teacher file does not fit the model or the dataset."""
        if self.n_layers != n_layers or self.hidden_size != hidden_size:
            raise SirenError(
                f"{self.path} holds {self.n_layers} layers x hidden size {self.hidden_size}, but the model has "
                f"{n_layers} layers x hidden size {hidden_size}"
            )
        if self.index_path is None and self.n_rows != n_dataset_rows:
            raise SirenError(
                f"{self.path} has {self.n_rows} rows but the training split has {n_dataset_rows} rows "
                f"(and there is no teacher_index.npy next to it saying which rows they are)"
            )
        out_of_range = self.row_ids[(self.row_ids < 0) | (self.row_ids >= n_dataset_rows)]
        if out_of_range.size:
            raise SirenError(
                f"{self.index_path} names row {int(out_of_range[0])}, but the training split has {n_dataset_rows} rows"
            )

    def has(self, row_index: int) -> bool:
        return int(row_index) in self._position

    def check_finite(self, row_indices, chunk_bytes: int = 64 << 20) -> None:
        """Refuse (one line) a NaN or infinite value in the states of the given dataset rows: one
        such row makes the alignment loss NaN and the adapter NaN. Reads the rows a bounded chunk
        at a time, in file order."""
        import numpy as np

        positions = sorted(self._position[int(r)] for r in row_indices)
        row_bytes = max(1, self.n_layers * self.hidden_size * self.hidden.dtype.itemsize)
        step = max(1, chunk_bytes // row_bytes)
        for start in range(0, len(positions), step):
            chunk = positions[start:start + step]
            finite = np.isfinite(np.asarray(self.hidden[chunk])).reshape(len(chunk), -1).all(axis=1)
            if not finite.all():
                first = chunk[int(np.argmin(finite))]
                raise SirenError(
                    f"{self.path}: the teacher state of dataset row {int(self.row_ids[first])} holds NaN or infinite "
                    "values; training on it would give a NaN adapter (re-extract with extract_last_hidden_ddp.py)"
                )

    def lookup(self, row_indices) -> torch.Tensor:
        """Teacher states `[B, L, H]` (float32) of the given dataset rows, in that order."""
        import numpy as np
        import torch

        try:
            positions = [self._position[int(r)] for r in row_indices]
        except KeyError as err:
            raise SirenError(f"no teacher hidden state for dataset row {err.args[0]}") from None
        return torch.from_numpy(np.asarray(self.hidden[positions], dtype=np.float32))
