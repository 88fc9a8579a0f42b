"""Reading a category's raw Amazon Reviews 2023 files: the review file into typed arrays, the meta
file into one "Title, categories" text per reviewed item, and the two filters that need the raw
records (repeated reviews, items without meta). siren.category_splits turns what is read here into
the four split files.

Input: `{Category}.jsonl(.gz)` (one review a line: `user_id`, `parent_asin`, `rating`,
`timestamp` in ms, ...) and `meta_{Category}.jsonl(.gz)` (one item a line: `parent_asin`, `title`,
`categories`, ...).

Memory follows the interactions kept, not the file size: the review file is streamed once and each
review is reduced to five numbers in typed arrays (user index, item index, timestamp, rating, line:
28 bytes) plus one dictionary entry per distinct user and item id; the meta file is streamed once
and only the texts of reviewed items are kept. Filtering (duplicates, items without meta, k-core,
user sample) works on numpy views of those arrays.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siren import SirenError
from siren.data import check_id, check_number, check_rating
from siren.io import iter_jsonl

RAW_REVIEW_FIELDS = ("user_id", "parent_asin", "rating", "timestamp")
# Where the raw files come from; scripts/get_data.sh --raw names the same place.
RAW_BASE_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw"


def raw_file_names(category: str) -> tuple[str, str]:
    """The Amazon Reviews 2023 file names of a category: (reviews, meta)."""
    return f"{category}.jsonl.gz", f"meta_{category}.jsonl.gz"


# --------------------------------------------------------------------------------------------
# Reading the review file
# --------------------------------------------------------------------------------------------


@dataclass
class Reviews:
    """Every review read, as parallel typed arrays; ids are indices into `user_ids` / `item_ids`."""

    path: Path
    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray  # int32
    items: np.ndarray  # int32
    timestamps: np.ndarray  # int64, ms
    ratings: np.ndarray  # float64
    lines: np.ndarray  # uint32, line in the review file
    lines_read: int = 0
    outside_window: int = 0
    # parent_asin -> index, kept for the meta pass (then dropped: it is the largest thing held)
    item_index: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.users)

    def take(self, keep: np.ndarray) -> None:
        """Keep only the reviews where `keep` is true (a mask or an index array)."""
        self.users, self.items = self.users[keep], self.items[keep]
        self.timestamps, self.ratings, self.lines = self.timestamps[keep], self.ratings[keep], self.lines[keep]


def _missing(path: Path, lineno: int, record: dict, fields: tuple[str, ...]) -> None:
    absent = [name for name in fields if record.get(name) is None]
    if absent:
        raise SirenError(f"{path}:{lineno}: missing field(s) {', '.join(absent)}")


def _timestamp(value, path: Path, lineno: int) -> int:
    value = check_number(value, path, lineno, "timestamp")
    if isinstance(value, float):
        if not value.is_integer():
            raise SirenError(f"{path}:{lineno}: timestamp {value!r} is not a whole number of milliseconds")
        value = int(value)
    return value


def read_reviews(path: str | os.PathLike, since: int | None = None, until: int | None = None,
                 progress: Callable[[str], None] | None = None, progress_every: int = 5_000_000) -> Reviews:
    """Stream the review file once; every line is checked, reviews outside [since, until) are skipped.

    A line without `user_id`, `parent_asin`, `rating` or `timestamp`, a rating that is not a number
    from 1 to 5, an id that is not a non-empty string, a truncated or corrupt file: one-line
    SirenError naming the file and line.
    """
    path = Path(path)
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users, items = array("i"), array("i")
    timestamps, ratings, lines = array("q"), array("d"), array("I")  # lines: 32 bits, 4.29e9 lines
    outside = 0
    lineno = 0
    for lineno, record in iter_jsonl(path):
        _missing(path, lineno, record, RAW_REVIEW_FIELDS)
        rating = check_rating(record["rating"], path, lineno, "rating")
        stamp = _timestamp(record["timestamp"], path, lineno)
        user = check_id(record["user_id"], path, lineno, "user_id")
        item = check_id(record["parent_asin"], path, lineno, "parent_asin")
        if (since is not None and stamp < since) or (until is not None and stamp >= until):
            outside += 1
            continue
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index.setdefault(item, len(item_index)))
        timestamps.append(stamp)
        ratings.append(rating)
        lines.append(lineno)
        if progress is not None and lineno % progress_every == 0:
            progress(f"{path.name}: {lineno:,} lines read, {len(user_index):,} users, {len(item_index):,} items")
    return Reviews(
        path=path, user_ids=list(user_index), item_ids=list(item_index),
        users=np.frombuffer(users, dtype=np.int32), items=np.frombuffer(items, dtype=np.int32),
        timestamps=np.frombuffer(timestamps, dtype=np.int64), ratings=np.frombuffer(ratings, dtype=np.float64),
        lines=np.frombuffer(lines, dtype=np.uint32), lines_read=lineno, outside_window=outside,
        item_index=item_index,
    )


@dataclass(frozen=True)
class DuplicateReviews:
    """Reviews of an item the same user reviewed again: how many were dropped, and the first pair."""

    dropped: int = 0
    example: tuple[str, str] | None = None  # (user_id, parent_asin)
    lines: tuple[int, int] | None = None  # the first two lines of that pair, in file order

    def describe(self, path: Path) -> str:
        return (f"{path}: {self.dropped:,} review(s) repeat an earlier (user_id, parent_asin) and were dropped, "
                f"keeping the latest of each; first {self.example!r} at lines {self.lines[0]} and {self.lines[1]}")


def drop_duplicates(reviews: Reviews) -> DuplicateReviews:
    """Keep one review per (user, item): the latest (largest timestamp; at equal ones, the later line)."""
    n = len(reviews)
    if n == 0:
        return DuplicateReviews()
    by_pair = np.lexsort((reviews.lines, reviews.timestamps, reviews.items, reviews.users))
    users, items = reviews.users[by_pair], reviews.items[by_pair]
    same_as_next = np.zeros(n, dtype=bool)
    same_as_next[:-1] = (users[1:] == users[:-1]) & (items[1:] == items[:-1])
    dropped = int(same_as_next.sum())
    if not dropped:
        return DuplicateReviews()
    # The first repeat in file order: the smallest line that is not its pair's first line.
    by_line = np.lexsort((reviews.lines, reviews.items, reviews.users))
    pair_users, pair_items, pair_lines = reviews.users[by_line], reviews.items[by_line], reviews.lines[by_line]
    repeat = np.zeros(n, dtype=bool)
    repeat[1:] = (pair_users[1:] == pair_users[:-1]) & (pair_items[1:] == pair_items[:-1])
    first = int(np.flatnonzero(repeat)[np.argmin(pair_lines[repeat])])
    start = first
    while repeat[start]:
        start -= 1
    example = (reviews.user_ids[pair_users[first]], reviews.item_ids[pair_items[first]])
    report = DuplicateReviews(dropped, example, (int(pair_lines[start]), int(pair_lines[first])))
    reviews.take(np.sort(by_pair[~same_as_next]))
    return report


# --------------------------------------------------------------------------------------------
# Reading the meta file: "Title, categories"
# --------------------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    # A history is one line per item, so a line break inside a title would split an item in two.
    return text.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")


def item_text(record: dict) -> str | None:
    """The "Title, categories" text of a meta record, or None when it has no title.

    `title`, then ", ", then the `categories` list joined with "|" (empty when there are none, so
    the text ends in ", "), exactly as the Movies files show; `main_category` and `details` are
    not part of it.
    """
    title = record.get("title")
    if not isinstance(title, str) or not title.strip():
        return None
    categories = record.get("categories")
    if isinstance(categories, str):
        categories = [categories]
    elif not isinstance(categories, list):
        categories = []
    names = [_one_line(str(c)) for c in categories if c is not None and str(c).strip()]
    return f"{_one_line(title)}, {'|'.join(names)}"


@dataclass
class ItemTexts:
    """The text of every reviewed item found in the meta file (None: absent, or no title)."""

    texts: list[str | None]
    meta_lines: int = 0
    without_title: set[int] = field(default_factory=set)
    repeated_records: int = 0  # meta records of an item already seen (the first one is used)


def read_meta(path: str | os.PathLike, wanted: dict[str, int]) -> ItemTexts:
    """Stream the meta file once and keep the texts of the `wanted` items (parent_asin -> index)
    only: a meta file lists far more items than a review sample uses."""
    path = Path(path)
    found = ItemTexts(texts=[None] * len(wanted))
    seen: set[int] = set()
    lineno = 0
    for lineno, record in iter_jsonl(path):
        _missing(path, lineno, record, ("parent_asin",))
        index = wanted.get(check_id(record["parent_asin"], path, lineno, "parent_asin"))
        if index is None:
            continue
        if index in seen:
            found.repeated_records += 1
            continue
        seen.add(index)
        text = item_text(record)
        if text is None:
            found.without_title.add(index)
        found.texts[index] = text
    found.meta_lines = lineno
    return found


@dataclass(frozen=True)
class MissingMeta:
    """Reviews dropped because their item has no usable meta record."""

    reviews: int = 0
    items: int = 0
    reviews_without_title: int = 0  # of `reviews`: the item is in meta but has no title
    share: float = 0.0
    example: tuple[str, int] | None = None  # (parent_asin, line in the review file)

    def describe(self, reviews_path: Path, meta_path: Path) -> str:
        absent = self.reviews - self.reviews_without_title
        return (f"{self.reviews:,} review(s) of {self.items:,} item(s) without a usable record in {meta_path} "
                f"({absent:,} absent, {self.reviews_without_title:,} without a title), {100 * self.share:.2f}% of "
                f"the reviews; first {self.example[0]!r} at {reviews_path}:{self.example[1]}")


def drop_missing_meta(reviews: Reviews, meta: ItemTexts, meta_path: Path, max_share: float) -> MissingMeta:
    """Drop the reviews of items without text; refuse when their share is above `max_share`."""
    has_text = np.fromiter((text is not None for text in meta.texts), dtype=bool, count=len(meta.texts))
    missing = ~has_text[reviews.items]
    count = int(missing.sum())
    if not count:
        return MissingMeta()
    first = int(np.argmin(np.where(missing, reviews.lines, np.iinfo(np.uint32).max)))
    missing_items = np.unique(reviews.items[missing])
    untitled = np.fromiter((i in meta.without_title for i in range(len(meta.texts))), dtype=bool, count=len(meta.texts))
    report = MissingMeta(
        reviews=count, items=len(missing_items), reviews_without_title=int(untitled[reviews.items].sum()),
        share=count / len(reviews),
        example=(reviews.item_ids[reviews.items[first]], int(reviews.lines[first])),
    )
    if report.share > max_share:
        raise SirenError(f"{report.describe(reviews.path, meta_path)}: more than --max_missing_meta {max_share} "
                         "allows (is the meta file the same category's?)")
    reviews.take(~missing)
    return report


