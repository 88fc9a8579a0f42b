"""Loading and validating the rating-prediction data files (schemas: data/README.md).

Files of a category live in one directory:
  train.jsonl.gz / valid.jsonl.gz / test.jsonl.gz  one candidate per row
  history.jsonl.gz                                  one user per row, without valid/test targets
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from siren import SirenError
from siren.reading import RecordCheck, missing_file_message
from siren.reading import iter_jsonl as _io_iter_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train", "valid", "test")
SPLIT_FIELDS = ("user_id", "parent_asin", "timestamp", "label", "target", "history")
HISTORY_FIELDS = ("user_id", "history", "history_asins", "history_ratings")
SPLIT_KEY = ("user_id", "parent_asin")  # a split row's identity, for the duplicate report
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


def check_category_name(category: str, what: str = "category") -> str:
    """A category is a folder name (`Movies`, `Video_Games`), never a path: every stage puts it
    into paths (`<data_root>/<category>`, `data/<category>/verl/...`), so a separator or `..`
    would read or write outside the folders the flags name. The one check every entry point uses
    (siren.cli's --category, the data search, the default output folders), and for the other
    names that become part of a folder name (`what`: stage 3's --data_name, GRPO_{data_name}_step{S})."""
    if not isinstance(category, str) or not category.strip():
        raise SirenError(f"{what} {category!r} is empty; give a folder name such as Movies")
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    if any(sep in category for sep in separators) or category in (".", "..") \
            or any(ord(ch) < 32 for ch in category):
        raise SirenError(f"{what} {category!r} is not a name: a {what} is one folder name (such as Movies), "
                         "without path separators, '.', '..' or control characters")
    return category


def resolve_category_dir(category: str, data_root: str | os.PathLike | None = None) -> Path:
    """Find `<root>/<category>` holding the split files.

    With `data_root` given, only that root is used. Otherwise $SIREN_DATA_DIR, ./data, the repo's
    data/ and ../shared/data are searched.
    """
    check_category_name(category)
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
        raise SirenError(f"{missing_file_message(path, what)}; {GET_DATA_HINT}")
    return path


def iter_jsonl(path: str | os.PathLike, check: RecordCheck | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) from a .jsonl or .jsonl.gz file (siren.io.iter_jsonl).

    Every problem is a one-line SirenError naming the file (and the line where known): a missing
    file, a line that is not JSON or not an object, bytes that are not UTF-8, a corrupt or
    truncated gzip stream. `check(record, path, lineno)` validates each record inside the reader
    (see siren.io.iter_jsonl_lines).
    """
    yield from _io_iter_jsonl(require_file(path), check)


# --------------------------------------------------------------------------------------------
# Field checks: the types data/README.md gives. JSON true/false are not numbers here (Python
# would count True as 1), and a number written as a string ("4") is not a number either.
# --------------------------------------------------------------------------------------------


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value) -> str:
    return {bool: "a boolean", str: "a string", type(None): "null", list: "a list", dict: "an object"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__
    )


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_id(value, path: Path, lineno: int, field: str) -> str:
    """`user_id` / `parent_asin`: a non-empty string (null, numbers and "" are refused)."""
    if not isinstance(value, str) or not value.strip():
        raise SirenError(f"{path}:{lineno}: {field} must be a non-empty string, got {_kind(value)} {_show(value)}")
    return value


def check_string(value, path: Path, lineno: int, field: str) -> str:
    if not isinstance(value, str):
        raise SirenError(f"{path}:{lineno}: {field} must be a string, got {_kind(value)} {_show(value)}")
    return value


def check_number(value, path: Path, lineno: int, field: str) -> float | int:
    """A finite JSON number (not a boolean, not a string)."""
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise SirenError(f"{path}:{lineno}: {field} must be a finite number, got {_kind(value)} {_show(value)}")
    return value


def check_rating(value, path: Path, lineno: int, what: str = "label") -> float:
    """A rating: a JSON number from 1 to 5, returned as a float."""
    if not _is_number(value):
        raise SirenError(f"{path}:{lineno}: {what} {_show(value)} is not a number (it is {_kind(value)}); "
                         "ratings are JSON numbers from 1 to 5")
    if not 1 <= value <= 5:  # also false for NaN; compared before float() so huge integers cannot overflow
        raise SirenError(f"{path}:{lineno}: {what} {_show(value)} is outside 1-5")
    return float(value)


def _check_fields(path: Path, lineno: int, record: dict, fields: tuple[str, ...]) -> None:
    missing = [f for f in fields if f not in record]
    if missing:
        raise SirenError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")


def check_split_record(record: dict, path: Path, lineno: int) -> dict:
    """Validate one split row in place (types of data/README.md); `label` becomes a float."""
    _check_fields(path, lineno, record, SPLIT_FIELDS)
    check_id(record["user_id"], path, lineno, "user_id")
    check_id(record["parent_asin"], path, lineno, "parent_asin")
    check_number(record["timestamp"], path, lineno, "timestamp")
    record["label"] = check_rating(record["label"], path, lineno)
    check_string(record["target"], path, lineno, "target")
    check_string(record["history"], path, lineno, "history")
    return record


def check_history_record(record: dict, path: Path, lineno: int) -> dict:
    """Validate one history.jsonl.gz row in place; `history_ratings` become floats."""
    _check_fields(path, lineno, record, HISTORY_FIELDS)
    check_id(record["user_id"], path, lineno, "user_id")
    check_string(record["history"], path, lineno, "history")
    asins, ratings = record["history_asins"], record["history_ratings"]
    if not isinstance(asins, list) or not isinstance(ratings, list):
        raise SirenError(f"{path}:{lineno}: history_asins and history_ratings must be lists")
    if len(asins) != len(ratings):
        raise SirenError(
            f"{path}:{lineno}: history_asins has {len(asins)} items but history_ratings has {len(ratings)}"
        )
    for position, asin in enumerate(asins):
        check_id(asin, path, lineno, f"history_asins[{position}]")
    record["history_ratings"] = [
        check_rating(r, path, lineno, f"history_ratings[{position}]") for position, r in enumerate(ratings)
    ]
    return record


# --------------------------------------------------------------------------------------------
# Repeated keys
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Duplicates:
    """Rows of a file that repeat an earlier row's key: how many, and the first such pair."""

    fields: tuple[str, ...]
    count: int = 0
    example: tuple | None = None  # the key of the first repeated row
    lines: tuple[int, int] | None = None  # (line of its first occurrence, line of the repeat)

    def describe(self, path: str | os.PathLike) -> str:
        """One line, e.g. "train.jsonl.gz: 2 rows repeat an earlier (user_id, parent_asin), first ..."."""
        key = self.example[0] if len(self.fields) == 1 else self.example
        return (f"{path}: {self.count} row(s) repeat an earlier ({', '.join(self.fields)}), first {key!r} "
                f"at lines {self.lines[0]} and {self.lines[1]}")


class DuplicateFinder:
    """Counts rows whose `fields` repeat an earlier row's (`add` each row, then `result`)."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.fields = fields
        self.first_line: dict[tuple, int] = {}
        self.count = 0
        self.example: tuple | None = None
        self.lines: tuple[int, int] | None = None

    def add(self, record: dict, lineno: int) -> None:
        key = tuple(record[f] for f in self.fields)
        first = self.first_line.setdefault(key, lineno)
        if first != lineno:
            self.count += 1
            if self.example is None:
                self.example, self.lines = key, (first, lineno)

    def result(self) -> Duplicates:
        return Duplicates(self.fields, self.count, self.example, self.lines)


class SplitRows(list):
    """The rows of a split file (a list of dicts), with `path` and `duplicates` (a `Duplicates`)."""

    path: Path
    duplicates: Duplicates


def load_split(path: str | os.PathLike, *, warn: bool = True) -> SplitRows:
    """Read and validate one split file (train/valid/test.jsonl.gz).

    Rows repeating an earlier (user_id, parent_asin) are all kept (each is a row of the split and
    has its own parquet index downstream); they are counted in `rows.duplicates` and, with
    `warn`, reported on stderr as one "warning: <file>: ..." line.
    """
    path = require_file(path, "split file")
    rows = SplitRows()
    finder = DuplicateFinder(SPLIT_KEY)
    for lineno, record in iter_jsonl(path, check_split_record):
        rows.append(record)
        finder.add(record, lineno)
    if not rows:
        raise SirenError(f"{path}: the split is empty")
    rows.path, rows.duplicates = path, finder.result()
    if warn and rows.duplicates.count:
        print(f"warning: {rows.duplicates.describe(path)}; all rows are kept", file=sys.stderr)
    return rows


def load_history(path: str | os.PathLike) -> list[dict]:
    """Read and validate history.jsonl.gz (one row per user).

    A user on two rows is refused (count and first example): the sketch of that user would
    depend on which row a stage happened to use.
    """
    return load_per_user_rows(path, "history file", check_history_record, "(merge them)")


def load_per_user_rows(path: str | os.PathLike, what: str, check_record, remedy: str = "") -> list[dict]:
    """The checked rows of a JSONL file that holds one row per `user_id` (history.jsonl.gz, stage 1's
    user_feature.jsonl): a missing or empty file, or a user on two rows, is a one-line error."""
    path = require_file(path, what)
    rows = []
    finder = DuplicateFinder(("user_id",))
    for lineno, record in iter_jsonl(path, check_record):
        rows.append(record)
        finder.add(record, lineno)
    if not rows:
        raise SirenError(f"{path}: the {what} is empty")
    duplicates = finder.result()
    if duplicates.count:
        raise SirenError(f"{duplicates.describe(path)}; the {what} holds one row per user {remedy}".rstrip())
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


# Split names on the command line and in every file but the verl parquet ("val.parquet", verl's
# convention; `siren.verl_data.PARQUET_SPLITS` maps to it).
SPLIT_ALIASES = {"val": "valid", "validation": "valid"}


def canonical_split(name: str) -> str:
    """train, valid or test; `val` and `validation` mean valid."""
    split = SPLIT_ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    if split not in SPLITS:
        raise SirenError(f"unknown split {name!r}; expected train, valid (or val) or test")
    return split


def _main(argv: list[str] | None = None) -> int:
    """`python -m siren.data CATEGORY [--data_root DIR]`: print the data root the stages would use
    (the folder holding CATEGORY/), so shell scripts find the data exactly as the Python stages do."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("category")
    parser.add_argument("--data_root", default=None, help="only this folder (unset: the usual search)")
    args = parser.parse_args(argv)
    try:
        print(resolve_category_dir(args.category, args.data_root).parent)
    except SirenError as err:  # one line, as every stage reports it (siren.cli.run_main, not imported here)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
