"""Stage 4b: teacher contexts, last-token hidden states streamed to disk, and the teacher files.

Teacher context (4b): chat-templated prompt + the model's reasoning through `</think>` +
"\n\n<answer>". Student context (4c, 5, 6): chat-templated prompt + empty think block +
`<answer>`. Both end in the same text, "</think>\n\n<answer>", and must end in the same tokens; the
last one is the aligned position. With left padding that position is the last column of a batch.

Hidden states stream to per-process `.npy` shards through plain positioned writes (no mapping, so
the resident memory does not grow with the file) and are merged into one `[N, L, H]` file in
dataset order, a bounded chunk at a time. Stage 5 reads them back by dataset row with `TeacherStates`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from siren import SirenError
from siren.ao_data import student_text
from siren.prompts import ALIGNED_TAIL, aligned_tail_ids, chat_prompt_text, teacher_context

if TYPE_CHECKING:
    import torch

# Stage 4b's files; stage 5 reads them back through TeacherStates.
HIDDEN_NAME, INDEX_NAME = "teacher_hidden.npy", "teacher_index.npy"


# ---------------------------------------------------------------------------------------------
# Contexts and tokens


def teacher_text(tokenizer, row: dict, reasoning: str) -> str:
    return teacher_context(chat_prompt_text(tokenizer, row["prompt"]), reasoning)


def check_context_tail(index: int, teacher_ids: Sequence[int], student_ids: Sequence[int], tail_ids: Sequence[int]) -> None:
    """Both contexts must end with the tokens of "</think>\\n\\n<answer>"; an error names the row."""
    k = len(tail_ids)
    teacher_tail, student_tail = list(teacher_ids[-k:]), list(student_ids[-k:])
    if teacher_tail != list(tail_ids) or student_tail != list(tail_ids):
        raise SirenError(
            f"row {index}: the teacher and answer-only contexts do not end in the same tokens for "
            f"{ALIGNED_TAIL!r} (teacher {teacher_tail}, student {student_tail}, expected {list(tail_ids)})"
        )


def check_contexts(tokenizer, rows: Sequence[dict], thinking: Sequence[dict], positions: Sequence[int],
                   chunk_size: int = 256) -> list[int]:
    """Check every row's context tails; return the teacher context lengths in tokens.

    Works in chunks so that only `chunk_size` rows of token ids exist at a time.
    """
    tail_ids = aligned_tail_ids(tokenizer)
    lengths: list[int] = []
    for start in range(0, len(positions), chunk_size):
        chunk = positions[start:start + chunk_size]
        teacher_ids = tokenizer([teacher_text(tokenizer, rows[p], thinking[p]["reasoning"]) for p in chunk],
                                add_special_tokens=False)["input_ids"]
        student_ids = tokenizer([student_text(tokenizer, rows[p]) for p in chunk], add_special_tokens=False)["input_ids"]
        for p, teacher, student in zip(chunk, teacher_ids, student_ids, strict=True):
            check_context_tail(int(rows[p]["extra_info"]["index"]), teacher, student, tail_ids)
            lengths.append(len(teacher))
    return lengths


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


# ---------------------------------------------------------------------------------------------
# Resident memory, for the manifest and scripts/bench_hidden.py


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS counter (Linux >= 4.0), so that the peak measured later is
    that of the extraction, not of loading the model. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB (since reset_peak_rss, where that worked)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
        if create:
            header = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=(n_rows, *self.row_shape))
            del header
        probe = np.load(self.path, mmap_mode="r")
        if probe.shape != (n_rows, *self.row_shape) or probe.dtype != self.dtype:
            raise SirenError(f"{self.path}: shape {probe.shape} {probe.dtype}, expected {(n_rows, *self.row_shape)} {self.dtype}")
        self.offset = probe.offset
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

    Process r held selected rows r, r + world, ... (strided), in that order, so output row k is
    row k // world of shard k % world. Each chunk of output rows is gathered in memory and
    written in one piece.
    """
    n = len(selected)
    shards = []
    for rank in range(world):
        hidden, index = shard_paths(parts_dir, rank)
        expected = list(selected[rank::world])
        found = np.load(index).tolist()
        if found != expected:
            raise SirenError(f"{index}: holds rows {found[:5]}..., expected {expected[:5]}...")
        shards.append(NpyRows(hidden, len(expected), row_shape, dtype, create=False))
    out = NpyRows(hidden_path, n, row_shape, dtype, create=True)
    rows_per_chunk = max(world, (chunk_bytes // max(1, out.row_bytes)) // world * world)
    try:
        for start in range(0, n, rows_per_chunk):
            stop = min(n, start + rows_per_chunk)
            block = np.empty((stop - start, *row_shape), dtype=out.dtype)
            for rank, shard in enumerate(shards):
                first = -(-(start - rank) // world) if start > rank else 0  # first slot with k >= start
                ks = range(rank + first * world, stop, world)
                if len(ks):
                    block[ks.start - start:stop - start:world] = shard.read(first, len(ks))
            out.write(start, block)
    finally:
        out.close(sync=True)
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
