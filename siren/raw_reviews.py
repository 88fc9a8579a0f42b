"""Build a category's four split files from the raw Amazon Reviews 2023 review and meta files.

Input: `{Category}.jsonl(.gz)` (one review a line: `user_id`, `parent_asin`, `rating`,
`timestamp` in ms, ...) and `meta_{Category}.jsonl(.gz)` (one item a line: `parent_asin`, `title`,
`categories`, ...). Output: `train/valid/test/history.jsonl.gz` in the schema of data/README.md,
made the way the published Movies files were made (the protocol, and how it was read off those
files, is in data/README.md "Building a category from the raw files").

Memory follows the interactions kept, not the file size: the review file is streamed once and each
review is reduced to five numbers in typed arrays (user index, item index, timestamp, rating, line:
28 bytes) plus one dictionary entry per distinct user and item id; the meta file is streamed once
and only the texts of reviewed items are kept. Filtering (duplicates, items without meta, k-core,
user sample) works on numpy views of those arrays.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from siren import SirenError
from siren.data import check_id, check_number, check_rating
from siren.io import iter_jsonl

SPLIT_FILES = ("train.jsonl.gz", "valid.jsonl.gz", "test.jsonl.gz", "history.jsonl.gz")
STATS_NAME = "stats.json"
RAW_REVIEW_FIELDS = ("user_id", "parent_asin", "rating", "timestamp")
# Where the raw files come from; scripts/get_data.sh --raw names the same place.
RAW_BASE_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw"


def raw_file_names(category: str) -> tuple[str, str]:
    """The Amazon Reviews 2023 file names of a category: (reviews, meta)."""
    return f"{category}.jsonl.gz", f"meta_{category}.jsonl.gz"


# --------------------------------------------------------------------------------------------
# Settings and the time window
# --------------------------------------------------------------------------------------------


def parse_time_bound(value: str) -> int:
    """A --since/--until value as epoch milliseconds (the unit of the raw `timestamp`): an integer
    in ms, or an ISO date or date-time (`2015-01-01`, `2015-01-01T12:00`), read as UTC."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected epoch milliseconds or an ISO date such as 2015-01-01, got {value!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class BuildSettings:
    """What decides which interactions end up in the files (the builder's flags)."""

    k_core: int = 5  # users with fewer interactions are dropped
    item_k_core: int = 0  # items with fewer interactions are dropped (0: no item filter, as Movies shows)
    min_history: int = 3  # a history interaction is a train row when it has this many earlier ones
    max_users: int | None = None  # a seeded sample of that many users (after the k-core)
    seed: int = 0
    since: int | None = None  # ms, inclusive
    until: int | None = None  # ms, exclusive
    max_missing_meta: float = 0.05  # share of reviews without a usable meta record that is tolerated

    def check(self) -> None:
        if self.k_core < 3:
            # each user needs a valid target, a test target and at least one history interaction
            raise SirenError(f"--k_core must be at least 3 (history + valid + test), got {self.k_core}")
        if self.item_k_core < 0 or self.min_history < 0:
            raise SirenError("--item_k_core and --min_history must not be negative")
        if self.max_users is not None and self.max_users < 1:
            raise SirenError(f"--max_users must be at least 1, got {self.max_users}")
        if not 0 <= self.max_missing_meta <= 1:
            raise SirenError(f"--max_missing_meta is a share from 0 to 1, got {self.max_missing_meta}")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise SirenError(f"--since ({self.since}) must be earlier than --until ({self.until})")


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


# --------------------------------------------------------------------------------------------
# k-core and user sample
# --------------------------------------------------------------------------------------------


def k_core_mask(users: np.ndarray, items: np.ndarray, user_k: int, item_k: int = 0) -> tuple[np.ndarray, int]:
    """(mask of the interactions kept, passes that removed something).

    Users with fewer than `user_k` interactions and (with `item_k` > 0) items with fewer than
    `item_k` are dropped, repeated until nothing changes: dropping an item can take a user below
    `user_k` and the other way round. With users only, the first pass is already stable.
    """
    keep = np.ones(len(users), dtype=bool)
    passes = 0
    while True:
        too_few = np.bincount(users[keep], minlength=int(users.max(initial=-1)) + 1)[users] < user_k
        if item_k > 0:
            too_few |= np.bincount(items[keep], minlength=int(items.max(initial=-1)) + 1)[items] < item_k
        shrunk = keep & ~too_few
        if shrunk.sum() == keep.sum():
            return keep, passes
        keep = shrunk
        passes += 1


def _ranks(ids: list[str], present: np.ndarray) -> np.ndarray:
    """Each id's position in sorted order (ids not `present` rank after every present one)."""
    ranks = np.full(len(ids), len(ids), dtype=np.int64)
    in_order = sorted(np.flatnonzero(present).tolist(), key=ids.__getitem__)
    ranks[in_order] = np.arange(len(in_order))
    return ranks


# --------------------------------------------------------------------------------------------
# Writing the four files
# --------------------------------------------------------------------------------------------


def dump_row(row: dict) -> str:
    """One JSON line as the published files have it (pandas `to_json(lines=True)` style): compact
    separators, non-ASCII characters as they are, "/" escaped as "\\/"."""
    # "/" only occurs inside JSON strings, where "\/" is a valid escape of it.
    return json.dumps(row, ensure_ascii=False, separators=(",", ":")).replace("/", "\\/")


def rating_value(rating: float) -> int | float:
    """A rating as history.jsonl.gz stores it: an integer when it is whole (3), else the number."""
    return int(rating) if float(rating).is_integer() else float(rating)


def rating_text(rating: float, *, train: bool) -> str:
    """The rating at the end of a history line: "3.0" in train histories, "3" everywhere else."""
    return repr(float(rating)) if train else str(rating_value(rating))


@dataclass
class SplitCounts:
    rows: dict[str, int] = field(default_factory=lambda: {"train": 0, "valid": 0, "test": 0})
    users: int = 0
    items: int = 0
    interactions: int = 0
    history_interactions: int = 0
    ratings: Counter = field(default_factory=Counter)
    labels: dict[str, Counter] = field(default_factory=lambda: {"train": Counter(), "valid": Counter(), "test": Counter()})


def iter_user_rows(user_id: str, asins: list[str], texts: list[str], stamps: list[int], ratings: list[float],
                   min_history: int) -> Iterator[tuple[str, dict]]:
    """(file, row) of one user, interactions oldest first: the train rows, valid, test, history.

    The last interaction is the test target and the one before it the valid target; both carry the
    same history (the interactions before the valid target, each line ending in "\\n"), as in the
    Movies files. Every earlier interaction with at least `min_history` before it is a train row
    whose history lists those earlier ones ("\\n"-joined, ratings printed "3.0").
    """
    held = len(asins) - 2
    train_lines = [f"{texts[i]}, {rating_text(ratings[i], train=True)}" for i in range(held)]
    joined = "\n".join(train_lines)
    # prefix_end[j]: where the first j lines end in `joined`, so each train history is one slice
    prefix_end = [0]
    for line in train_lines:
        prefix_end.append(prefix_end[-1] + len(line) + (1 if len(prefix_end) > 1 else 0))
    for j in range(min_history, held):
        yield "train", {"user_id": user_id, "parent_asin": asins[j], "timestamp": stamps[j],
                        "label": float(ratings[j]), "target": texts[j], "history": joined[:prefix_end[j]]}
    history_lines = [f"{texts[i]}, {rating_text(ratings[i], train=False)}" for i in range(held)]
    eval_history = "".join(line + "\n" for line in history_lines)
    for split, i in (("valid", held), ("test", held + 1)):
        yield split, {"user_id": user_id, "parent_asin": asins[i], "timestamp": stamps[i],
                      "label": float(ratings[i]), "target": texts[i], "history": eval_history}
    yield "history", {"user_id": user_id, "history": "\n".join(history_lines), "history_asins": asins[:held],
                      "history_ratings": [rating_value(r) for r in ratings[:held]]}


def write_splits(out_dir: Path, reviews: Reviews, texts: list[str | None], min_history: int,
                 compresslevel: int = 3) -> SplitCounts:
    """Write train/valid/test/history.jsonl.gz into `out_dir`: users in user_id order, each user's
    interactions by timestamp, equal timestamps by parent_asin.

    Compression takes most of the writing (train histories repeat each other); on generated train
    rows level 3 compressed twice as fast as gzip's default 6, into files 16% larger.
    """
    counts = SplitCounts()
    user_rank = _ranks(reviews.user_ids, np.bincount(reviews.users, minlength=len(reviews.user_ids)) > 0)
    item_rank = _ranks(reviews.item_ids, np.bincount(reviews.items, minlength=len(reviews.item_ids)) > 0)
    order = np.lexsort((item_rank[reviews.items], reviews.timestamps, user_rank[reviews.users]))
    users, items = reviews.users[order], reviews.items[order]
    stamps, ratings = reviews.timestamps[order], reviews.ratings[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    handles = {}
    try:
        for name in SPLIT_FILES:
            # mtime=0: the same input gives the same bytes
            handles[name.split(".")[0]] = io.TextIOWrapper(
                gzip.GzipFile(out_dir / name, "wb", compresslevel, mtime=0), encoding="utf-8", newline="\n")
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            item_list = items[start:end].tolist()
            rating_list = ratings[start:end].tolist()
            for split, row in iter_user_rows(
                reviews.user_ids[users[start]], [reviews.item_ids[i] for i in item_list],
                [texts[i] for i in item_list], stamps[start:end].tolist(), rating_list, min_history,
            ):
                handles[split].write(dump_row(row) + "\n")
                if split != "history":
                    counts.rows[split] += 1
                    counts.labels[split][rating_text(row["label"], train=True)] += 1
            counts.ratings.update(rating_text(r, train=True) for r in rating_list)
            counts.history_interactions += end - start - 2
    finally:
        for handle in handles.values():
            handle.close()
    counts.users = len(starts)
    counts.items = int(len(np.unique(items)))
    counts.interactions = len(users)
    return counts


# --------------------------------------------------------------------------------------------
# The whole build
# --------------------------------------------------------------------------------------------


@dataclass
class BuildPlan:
    """Everything read and filtered, ready to write; `report` holds the counts of every step."""

    reviews: Reviews
    texts: list[str | None]
    duplicates: DuplicateReviews
    missing_meta: MissingMeta
    report: dict
    seconds: dict = field(default_factory=dict)  # wall time of each step, for the manifest

    def warnings(self, meta_path: Path) -> list[str]:
        lines = []
        if self.duplicates.dropped:
            lines.append(self.duplicates.describe(self.reviews.path))
        if self.missing_meta.reviews:
            lines.append(self.missing_meta.describe(self.reviews.path, meta_path) + "; they were dropped")
        return lines


def plan_build(reviews_path: str | os.PathLike, meta_path: str | os.PathLike, settings: BuildSettings,
               progress: Callable[[str], None] | None = None) -> BuildPlan:
    """Read both raw files and apply every filter; nothing is written."""
    settings.check()
    reviews_path, meta_path = Path(reviews_path), Path(meta_path)
    for path, what in ((reviews_path, "review file"), (meta_path, "meta file")):
        if not path.is_file():
            raise SirenError(f"missing {what}: {path} (bash scripts/get_data.sh --raw <Category> names the files "
                             "to download)")
    clock = time.perf_counter()
    seconds = {}
    reviews = read_reviews(reviews_path, settings.since, settings.until, progress)
    seconds["reading_reviews"] = round(time.perf_counter() - clock, 2)
    report: dict = {"review_lines": reviews.lines_read, "reviews_outside_window": reviews.outside_window,
                    "reviews_in_window": len(reviews)}
    if not len(reviews):
        raise SirenError(f"{reviews_path}: no review{' in the --since/--until window' if reviews.outside_window else ''}")
    clock = time.perf_counter()
    duplicates = drop_duplicates(reviews)
    report["duplicate_reviews_dropped"] = duplicates.dropped
    seconds["dropping_repeats"] = round(time.perf_counter() - clock, 2)

    clock = time.perf_counter()
    meta = read_meta(meta_path, reviews.item_index)
    reviews.item_index = None
    seconds["reading_meta"] = round(time.perf_counter() - clock, 2)
    clock = time.perf_counter()
    report.update(meta_lines=meta.meta_lines, meta_repeated_records=meta.repeated_records)
    missing = drop_missing_meta(reviews, meta, meta_path, settings.max_missing_meta)
    report.update(reviews_missing_meta=missing.reviews, items_missing_meta=missing.items,
                  reviews_item_without_title=missing.reviews_without_title)

    users_before = int(len(np.unique(reviews.users)))
    keep, passes = k_core_mask(reviews.users, reviews.items, settings.k_core, settings.item_k_core)
    reviews.take(keep)
    report.update(k_core_passes=passes, reviews_below_k_core=int((~keep).sum()))
    kept_users = np.unique(reviews.users)
    report["users_below_k_core"] = users_before - len(kept_users)
    if not len(kept_users):
        raise SirenError(f"{reviews_path}: no user has {settings.k_core} or more usable reviews"
                         + (f" of items with {settings.item_k_core} or more" if settings.item_k_core else "")
                         + "; nothing to build (lower --k_core, or widen --since/--until)")

    report["users_sampled_out"] = 0
    if settings.max_users is not None and settings.max_users < len(kept_users):
        # Sample from the users in id order, so the sample depends on the seed, not on the file's order.
        by_id = kept_users[np.argsort(np.array([reviews.user_ids[u] for u in kept_users], dtype=object), kind="stable")]
        chosen = np.random.default_rng(settings.seed).choice(len(by_id), size=settings.max_users, replace=False)
        in_sample = np.zeros(len(reviews.user_ids), dtype=bool)
        in_sample[by_id[chosen]] = True
        reviews.take(in_sample[reviews.users])
        report["users_sampled_out"] = len(kept_users) - settings.max_users
    seconds["filtering"] = round(time.perf_counter() - clock, 2)
    return BuildPlan(reviews, meta.texts, duplicates, missing, report, seconds)


def stats_record(category: str, counts: SplitCounts, plan: BuildPlan, settings: BuildSettings) -> dict:
    """stats.json: the dataset-table figures (Train / Valid / Test / User / Item), the rating
    distribution, what each filter removed and the settings."""
    table = {"Train": counts.rows["train"], "Valid": counts.rows["valid"], "Test": counts.rows["test"],
             "User": counts.users, "Item": counts.items}

    def ordered(counter: Counter) -> dict:
        return {key: counter[key] for key in sorted(counter, key=float)}

    return {
        "category": category,
        "table": table,
        "table_row": f"| {category} | " + " | ".join(f"{value:,}" for value in table.values()) + " |",
        "interactions": counts.interactions,
        "history_interactions": counts.history_interactions,
        "ratings": ordered(counts.ratings),
        "labels": {split: ordered(counter) for split, counter in counts.labels.items()},
        "filters": plan.report,
        "settings": {name: getattr(settings, name) for name in settings.__dataclass_fields__},
    }


def describe_counts(counts: SplitCounts) -> str:
    return (f"train {counts.rows['train']:,} / valid {counts.rows['valid']:,} / test {counts.rows['test']:,} rows, "
            f"{counts.users:,} users, {counts.items:,} items, {counts.interactions:,} interactions")
