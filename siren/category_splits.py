"""Build a category's four split files from its raw Amazon Reviews 2023 files (read by
siren.raw_reviews): the settings, the k-core and user sample, the split files and stats.json.

Output: `train/valid/test/history.jsonl.gz` in the schema of data/README.md, made the way the
published Movies files were made (the protocol, and how it was read off those files, is in
data/README.md "Building a category from the raw files").
"""

from __future__ import annotations

import gzip
import io
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from siren import SirenError
from siren.raw_reviews import (
    DuplicateReviews,
    MissingMeta,
    Reviews,
    drop_duplicates,
    drop_missing_meta,
    read_meta,
    read_reviews,
)

SPLIT_FILES = ("train.jsonl.gz", "valid.jsonl.gz", "test.jsonl.gz", "history.jsonl.gz")
STATS_NAME = "stats.json"


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
