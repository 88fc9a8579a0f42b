"""Stage 4b/4c: teacher contexts, last-token hidden states streamed to disk, and the AO dataset.

Teacher context (4b): chat-templated prompt + the model's reasoning through `</think>` +
"\n\n<answer>". Student context (4c, 5, 6): chat-templated prompt + empty think block +
`<answer>`. Both end in the same text, "</think>\n\n<answer>", and must end in the same tokens; the
last one is the aligned position. With left padding that position is the last column of a batch.

Hidden states stream to per-process `.npy` shards through plain positioned writes (no mapping, so
the resident memory does not grow with the file) and are merged into one `[N, L, H]` file in
dataset order, a bounded chunk at a time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from siren import SirenError
from siren.answer import ANSWER_OPEN, THINK_CLOSE
from siren.prompts import ANSWER_JOIN, answer_only_context, chat_prompt_text, teacher_context
from siren.verl_data import data_source

# The text both contexts end with; its tokens must agree between them.
ALIGNED_TAIL = THINK_CLOSE + ANSWER_JOIN + ANSWER_OPEN
HIDDEN_NAME, INDEX_NAME = "teacher_hidden.npy", "teacher_index.npy"
_VERL_DIR = re.compile(r"max@(\d+)-long@(True|False)")


def category_of(rows: Sequence[dict], override: str | None = None) -> str:
    """The category of parquet rows: `override` if given, else from `data_source` ("AmazonReviews/<Category>")."""
    if override:
        return override
    sources = {str(row["data_source"]) for row in rows}
    if len(sources) != 1:
        raise SirenError(f"rows come from {len(sources)} data sources ({', '.join(sorted(sources)[:3])}); pass --category")
    prefix, sep, category = sources.pop().partition("/")
    if not sep or not category or prefix + sep != data_source(""):
        raise SirenError(f"cannot read a category from data_source {prefix + sep + category!r}; pass --category")
    return category


# ---------------------------------------------------------------------------------------------
# The thinking file (stage 4a output) and its agreement with the parquet


def thinking_file(path: str | os.PathLike) -> Path:
    """results.jsonl itself, or the stage 4a directory that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise SirenError(f"no thinking file at {path} (run inference_train_ddp.py first)")
    return path


def load_thinking(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise SirenError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            missing = [f for f in ("index", "user_id", "parent_asin", "label", "reasoning", "correct") if f not in row]
            if missing:
                raise SirenError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
            rows.append(row)
    if not rows:
        raise SirenError(f"{path}: the thinking file is empty")
    return rows


def check_thinking_matches(rows: Sequence[dict], thinking: Sequence[dict], path: Path) -> None:
    """The thinking file must hold exactly the parquet rows, in order (index, user, item, label)."""
    if len(thinking) != len(rows):
        raise SirenError(
            f"{path} has {len(thinking)} rows but the parquet split has {len(rows)}; "
            "run stage 4b on the same split and --limit as stage 4a"
        )
    for position, (row, thought) in enumerate(zip(rows, thinking, strict=True)):
        info = row["extra_info"]
        expected = (int(info["index"]), str(info["user_id"]), str(info["parent_asin"]), float(row["label"]))
        found = (int(thought["index"]), str(thought["user_id"]), str(thought["parent_asin"]), float(thought["label"]))
        if expected != found:
            raise SirenError(
                f"{path}: row {position} is (index, user, item, label) {found} but the parquet row is {expected}"
            )


def load_mask(path: Path, thinking: Sequence[dict]) -> list[bool]:
    """mask.pt beside the thinking file, checked against its `correct` column."""
    import torch

    if not path.is_file():
        raise SirenError(f"--only_correct needs the correctness mask {path} (written by inference_train_ddp.py)")
    mask = torch.load(path)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.ndim != 1:
        raise SirenError(f"{path}: expected a 1-D torch.bool tensor")
    if len(mask) != len(thinking):
        raise SirenError(f"{path} has {len(mask)} entries but the thinking file has {len(thinking)} rows")
    values = mask.tolist()
    disagree = [i for i, (m, t) in enumerate(zip(values, thinking, strict=True)) if m != bool(t["correct"])]
    if disagree:
        raise SirenError(f"{path} disagrees with the thinking file's `correct` at rows {disagree[:5]}")
    return values


# ---------------------------------------------------------------------------------------------
# Contexts and tokens


def teacher_text(tokenizer, row: dict, reasoning: str) -> str:
    return teacher_context(chat_prompt_text(tokenizer, row["prompt"]), reasoning)


def student_text(tokenizer, row: dict) -> str:
    return answer_only_context(chat_prompt_text(tokenizer, row["prompt"]))


def aligned_tail_ids(tokenizer) -> list[int]:
    return tokenizer.encode(ALIGNED_TAIL, add_special_tokens=False)


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
# Row-addressed .npy files written without a memory map


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


# ---------------------------------------------------------------------------------------------
# Stage 4c: the answer-only prompt/completion dataset


def completion_text(label: float) -> str:
    """The AO completion, what the GRPO teacher writes after `<answer>`: "4.0</answer>" for a 4.

    The teacher's prompt shows `<answer>4.0</answer>` and the reward's ground truth is the label
    with one decimal, so the teacher writes "4.0". Qwen's tokenizer splits digits, so the first
    completion token is the rating digit alone ("4", ".", "0", "</", "answer", ">"): the token the
    aligned position (the end of `<answer>`) predicts and answer-only decoding reads.
    """
    if not float(label).is_integer():
        raise SirenError(f"label {label} is not a whole star; the answer-only target must start with one rating token")
    return f"{float(label):.1f}</answer>"


def answer_only_records(tokenizer, rows: Sequence[dict]) -> dict[str, list]:
    """Columns of one split of the 4c DatasetDict (data/README.md), rows in parquet order."""
    columns: dict[str, list] = {"prompt": [], "completion": [], "label": [], "index": [], "user_id": [], "parent_asin": []}
    for row in rows:
        info = row["extra_info"]
        columns["prompt"].append(student_text(tokenizer, row))
        columns["completion"].append(completion_text(row["label"]))
        columns["label"].append(float(row["label"]))
        columns["index"].append(int(info["index"]))
        columns["user_id"].append(str(info["user_id"]))
        columns["parent_asin"].append(str(info["parent_asin"]))
    return columns


def default_hidden_dir(parquet_dir: str | os.PathLike, category: str) -> Path:
    """data/{category}/hidden/max@{N}-long@{bool}, named after the parquet directory."""
    name = Path(parquet_dir).resolve().name
    if not _VERL_DIR.fullmatch(name):
        raise SirenError(f"cannot derive the output folder from {parquet_dir!r} (not named max@N-long@True|False); pass --out_dir")
    return Path("data") / category / "hidden" / name


def tokenizer_record(tokenizer, path: str | os.PathLike) -> dict:
    """What identifies the tokenizer, for the manifest (stage 5 can compare it with its model's)."""
    path = Path(path)
    digest = None
    if (path / "tokenizer.json").is_file():
        digest = hashlib.sha256((path / "tokenizer.json").read_bytes()).hexdigest()
    template = getattr(tokenizer, "chat_template", None) or ""
    return {
        "path": str(path.resolve()),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        "tokenizer_json_sha256": digest,
        "chat_template_sha256": hashlib.sha256(template.encode("utf-8")).hexdigest(),
        "aligned_tail_ids": aligned_tail_ids(tokenizer),
    }
