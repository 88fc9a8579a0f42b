"""Stage 4a's files: results.jsonl rows, the correctness mask (mask.pt) and the resumable part files.

Each process appends one JSON line per finished row to its own part file, flushed and fsynced after
every batch. A rerun reads every part file, skips the rows already there and generates only the
rest, so a crash costs at most one batch per process. The main process then merges the parts into
dataset order. Stage 4b and stage 5 read results.jsonl and mask.pt back through this module only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from siren import SirenError
from siren.answer import parse_response
from siren.reward import compute_score

if TYPE_CHECKING:
    import torch

RESULTS_NAME, MASK_NAME = "results.jsonl", "mask.pt"
PARTIAL_DIR_NAME = "partial"
SETTINGS_NAME = "settings.json"
# Test hook: stop every process after this many batches, as a crash would (no merged outputs).
STOP_AFTER_ENV = "SIREN_STOP_AFTER_BATCHES"
# Fields of results.jsonl, in order (data/README.md, stage 4a). Part rows carry extra private
# fields starting with "_" (timing) that the merge drops.
RESULT_FIELDS = (
    "index", "user_id", "parent_asin", "label", "response", "reasoning", "answer_text", "prediction",
    "valid", "correct", "format_ok", "generated_tokens",
)


def result_row(row: dict, response: str, generated_tokens: int) -> dict:
    """One results.jsonl row for a parquet row and the model's response.

    `correct` means the teacher can be trusted on this row: the response is well formed (one of
    each tag, in order, so the reasoning through `</think>` exists) and the rating in `<answer>`
    equals the label exactly, without clipping. It is what mask.pt holds.
    """
    parsed = parse_response(response)
    label = float(row["label"])
    correct = parsed.format_ok and parsed.rating is not None and parsed.rating == label
    info = row["extra_info"]
    return {
        "index": int(info["index"]),
        "user_id": str(info["user_id"]),
        "parent_asin": str(info["parent_asin"]),
        "label": label,
        "response": response,
        "reasoning": parsed.reasoning,
        "answer_text": parsed.answer_text,
        "prediction": parsed.rating,
        "valid": parsed.valid,
        "correct": bool(correct),
        "format_ok": parsed.format_ok,
        "generated_tokens": int(generated_tokens),
    }


def public_row(part_row: dict) -> dict:
    return {field: part_row[field] for field in RESULT_FIELDS}


def response_summary(rows: Sequence[dict]) -> dict:
    """Counts a reader needs next to the rating metrics: how many responses were usable at all."""
    n = len(rows)
    scores = [compute_score(None, r["response"], r["label"])["score"] for r in rows]
    return {
        "n": n,
        "format_ok": sum(r["format_ok"] for r in rows),
        "with_reasoning": sum(r["reasoning"] is not None for r in rows),
        "valid": sum(r["valid"] for r in rows),
        "correct": sum(r["correct"] for r in rows),
        "mean_reward": (sum(scores) / n) if n else None,
    }


def partial_dir(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / PARTIAL_DIR_NAME


def part_path(part_dir: Path, rank: int) -> Path:
    return part_dir / f"rank{rank}.jsonl"


def check_resume_settings(part_dir: Path, settings: dict) -> bool:
    """True if `part_dir` holds parts made with `settings`; an error if made with others.

    Every process calls this and gets the same answer, so a mismatch stops all of them.
    """
    path = part_dir / SETTINGS_NAME
    if not path.exists():
        if any(part_dir.glob("rank*.jsonl")):
            raise SirenError(f"{part_dir} holds part files but no {SETTINGS_NAME}; delete it or pass --resume false")
        return False
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SirenError(f"{path} is not valid JSON; delete {part_dir} or pass --resume false") from None
    differing = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
    if differing:
        detail = ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in differing)
        raise SirenError(
            f"partial results in {part_dir} were made with other settings ({detail}); "
            "rerun with the same flags, or pass --resume false to start over"
        )
    return True


def read_part_file(path: Path) -> list[dict]:
    """Rows of one part file; a torn last line (a crash mid-write) is ignored."""
    rows = []
    with open(path, "rb") as handle:
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]
    for lineno, line in enumerate(complete.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SirenError(f"{path}:{lineno}: not valid JSON; delete {path.parent} or pass --resume false") from None
    return rows


def read_parts(part_dir: Path) -> dict[int, dict]:
    """Finished rows from every process's part file, keyed by `index`.

    A row can appear twice only if a rerun with a different process count redid it; both copies
    must then agree (the generation is deterministic), else the parts are not from one setting.
    """
    finished: dict[int, dict] = {}
    if not part_dir.is_dir():
        return finished
    for path in sorted(part_dir.glob("rank*.jsonl")):
        for row in read_part_file(path):
            index = int(row["index"])
            if index in finished and public_row(finished[index]) != public_row(row):
                raise SirenError(f"{part_dir}: row {index} appears twice with different responses")
            finished.setdefault(index, row)
    return finished


class PartWriter:
    """Appends finished rows to this process's part file; each batch reaches the disk before the next."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        if path.exists():
            # Cut a torn last line so that the next append starts on a fresh line.
            data = path.read_bytes()
            keep = data.rfind(b"\n") + 1
            if keep != len(data):
                with open(path, "r+b") as handle:
                    handle.truncate(keep)
        self.handle = open(path, "a", encoding="utf-8")

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def merge_parts(part_dir: Path, n_rows: int) -> list[dict]:
    """All part rows in dataset order (index 0..n_rows-1), with their private fields."""
    finished = read_parts(part_dir)
    missing = [i for i in range(n_rows) if i not in finished]
    if missing:
        raise SirenError(f"{part_dir}: {len(missing)} of {n_rows} rows have no result (first: {missing[:5]})")
    # Rows past n_rows (an earlier attempt without --limit) are finished work that is not asked for.
    return [finished[i] for i in range(n_rows)]


def stop_after_batches() -> int | None:
    value = os.environ.get(STOP_AFTER_ENV, "").strip()
    return int(value) if value else None


def settings_record(**values) -> dict:
    """JSON-able record of what determines the generated text (compared on resume)."""
    record = {}
    for key, value in values.items():
        if is_dataclass(value):
            record.update(asdict(value))
        elif isinstance(value, Path):
            record[key] = str(value.resolve())
        else:
            record[key] = value
    return record


def thinking_file(path: str | os.PathLike) -> Path:
    """results.jsonl itself, or the stage 4a directory that holds it."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise SirenError(f"no thinking file at {path} (run inference_train_ddp.py first)")
    return path


def load_thinking(path: Path) -> list[dict]:
    from siren.io import iter_jsonl

    rows = []
    for lineno, row in iter_jsonl(path):
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


def save_mask(path: str | os.PathLike, correct: Sequence[bool]) -> Path:
    """Write mask.pt atomically. torch.save given a path stores that path's name inside the zip
    archive (here the random temporary name), so the tensor goes through an open file instead:
    identical runs give identical bytes."""
    import torch

    from siren.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(torch.tensor(list(correct), dtype=torch.bool), handle)
    return Path(path)


def load_mask(path: str | os.PathLike, n_rows: int, rows_name: str = "the training split") -> torch.Tensor:
    """mask.pt: a 1-D torch.bool tensor of `n_rows` entries (True where the teacher's CoT rating was
    exactly right). Anything else (floats, ints, another length, not a tensor) is refused."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise SirenError(f"missing correctness mask: {path} (written by inference_train_ddp.py)")
    try:
        mask = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise SirenError(f"{path}: cannot read a tensor ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if not isinstance(mask, torch.Tensor) or mask.ndim != 1 or mask.dtype != torch.bool:
        found = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SirenError(f"{path}: expected a 1-D torch.bool tensor, got {found}")
    if mask.numel() != n_rows:
        raise SirenError(f"{path} has {mask.numel()} entries but {rows_name} has {n_rows} rows")
    return mask


def check_mask_matches(mask, thinking: Sequence[dict], path: Path) -> list[bool]:
    """The mask must agree with results.jsonl's `correct` column row for row."""
    values = [bool(v) for v in mask.tolist()]
    disagree = [i for i, (m, t) in enumerate(zip(values, thinking, strict=True)) if m != bool(t["correct"])]
    if disagree:
        raise SirenError(f"{path} disagrees with the thinking file's `correct` at rows {disagree[:5]}")
    return values
