"""Loading and validating the rating-prediction data files (schemas: data/README.md, SPEC §2).

Files of a category live in one directory:
  train.jsonl.gz / valid.jsonl.gz / test.jsonl.gz  one candidate per row
  history.jsonl.gz                                  one user per row, without valid/test targets
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from siren import SirenError
from siren.io import iter_jsonl as _io_iter_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "valid", "test")
SPLIT_FIELDS = ("user_id", "parent_asin", "timestamp", "label", "target", "history")
HISTORY_FIELDS = ("user_id", "history", "history_asins", "history_ratings")
GET_DATA_HINT = "get it with: bash scripts/get_data.sh <Category> (or --from DIR)"


def data_search_roots() -> list[Path]:
    """Where a category directory is looked for, in order."""
    roots = []
    if os.environ.get("SIREN_DATA_DIR"):
        roots.append(Path(os.environ["SIREN_DATA_DIR"]))
    roots += [Path("data"), REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def resolve_category_dir(category: str, data_root: str | os.PathLike | None = None) -> Path:
    """Find `<root>/<category>` holding the split files.

    With `data_root` given, only that root is used. Otherwise $SIREN_DATA_DIR, ./data, the repo's
    data/ and ../shared/data are searched.
    """
    roots = [Path(data_root)] if data_root else data_search_roots()
    for root in roots:
        candidate = root / category
        if (candidate / "train.jsonl.gz").exists():
            return candidate
    looked = ", ".join(str(r / category) for r in roots)
    raise SirenError(f"no data for category {category!r} (looked in {looked}); {GET_DATA_HINT.replace('<Category>', category)}")


def require_file(path: str | os.PathLike, what: str = "data file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise SirenError(f"missing {what}: {path}; {GET_DATA_HINT}")
    return path


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) from a .jsonl or .jsonl.gz file (siren.io.iter_jsonl).

    Every problem is a one-line SirenError naming the file (and the line where known): a missing
    file, a line that is not JSON or not an object, bytes that are not UTF-8, a corrupt or
    truncated gzip stream.
    """
    yield from _io_iter_jsonl(require_file(path))


def _check_fields(path: Path, lineno: int, record: dict, fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise SirenError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")


def check_rating(value, path: Path, lineno: int, what: str = "label") -> float:
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise SirenError(f"{path}:{lineno}: {what} {value!r} is not a number") from None
    if math.isnan(rating) or not 1.0 <= rating <= 5.0:
        raise SirenError(f"{path}:{lineno}: {what} {value!r} is outside 1-5")
    return rating


def load_split(path: str | os.PathLike) -> list[dict]:
    """Read and validate one split file (train/valid/test.jsonl.gz)."""
    path = require_file(path, "split file")
    rows = []
    for lineno, record in iter_jsonl(path):
        _check_fields(path, lineno, record, SPLIT_FIELDS)
        record["label"] = check_rating(record["label"], path, lineno)
        if not isinstance(record["history"], str) or not isinstance(record["target"], str):
            raise SirenError(f"{path}:{lineno}: 'history' and 'target' must be strings")
        rows.append(record)
    if not rows:
        raise SirenError(f"{path}: the split is empty")
    return rows


def load_history(path: str | os.PathLike) -> list[dict]:
    """Read and validate history.jsonl.gz (one row per user)."""
    path = require_file(path, "history file")
    rows = []
    for lineno, record in iter_jsonl(path):
        _check_fields(path, lineno, record, HISTORY_FIELDS)
        asins, ratings = record["history_asins"], record["history_ratings"]
        if not isinstance(asins, list) or not isinstance(ratings, list):
            raise SirenError(f"{path}:{lineno}: history_asins and history_ratings must be lists")
        if len(asins) != len(ratings):
            raise SirenError(
                f"{path}:{lineno}: history_asins has {len(asins)} items but history_ratings has {len(ratings)}"
            )
        record["history_ratings"] = [check_rating(r, path, lineno, "history rating") for r in ratings]
        rows.append(record)
    if not rows:
        raise SirenError(f"{path}: the history file is empty")
    return rows


def split_path(category_dir: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise SirenError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return Path(category_dir) / f"{split}.jsonl.gz"


@dataclass(frozen=True)
class HistoryItem:
    """One "Title, categories, rating" history line. Titles may themselves contain commas."""

    title: str
    categories: str
    rating: float | None

    @property
    def text(self) -> str:
        """The item description without the rating ("Title, categories")."""
        return f"{self.title}, {self.categories}" if self.categories else self.title


def split_item_text(text: str) -> tuple[str, str]:
    """Split "Title, cat1|cat2" into (title, categories). The categories are the last field."""
    head, sep, tail = text.rpartition(", ")
    if not sep:
        return text.strip(), ""
    return head.strip(), tail.strip()


def parse_history_line(line: str) -> HistoryItem:
    """Parse "Title, categories, rating"; the rating is the last comma-separated field."""
    head, sep, last = line.rpartition(",")
    rating: float | None = None
    if sep:
        try:
            rating = float(last.strip())
        except ValueError:
            rating = None
    item_text = head if rating is not None else line
    title, categories = split_item_text(item_text.strip())
    return HistoryItem(title=title, categories=categories, rating=rating)


def history_lines(history: str) -> list[str]:
    """The non-empty lines of a newline-joined history string, oldest first."""
    return [line for line in history.split("\n") if line.strip()]
