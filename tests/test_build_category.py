"""scripts/build_category.py (siren.raw_reviews, siren.category_splits) and scripts/get_data.sh --raw.

- The round trip: raw review and meta files derived from the real Movies split files rebuild all
  four files line for line (the decompressed bytes are equal).
- A synthetic raw category with every edge case: repeated reviews, items without meta, ties,
  the time window, the k-core, the user sample; each bad input stops with one line and writes
  nothing.
- Stages 1 and 2 run on a built category that is neither Movies nor Books, with its item noun.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_refused, run_in_process

from siren.category_splits import BuildSettings, dump_row, k_core_mask, parse_time_bound, plan_build
from siren.data import load_history, load_split
from siren.prompts import item_noun
from siren.raw_reviews import item_text

SCRIPT = "scripts/build_category.py"
FILES = ("train", "valid", "test", "history")


def write_jsonl_gz(path: Path, rows: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as handle:
        return handle.read().splitlines(keepends=True)


def build(tmp_path: Path, category: str, reviews: Path, meta: Path, *extra: str, check: bool = True):
    return run_in_process(SCRIPT, "--category", category, "--reviews", str(reviews), "--meta", str(meta),
                      "--output_root", str(tmp_path / "data"), *extra, check=check)


# ---------------------------------------------------------------------------------------------
# The round trip on the real Movies files
# ---------------------------------------------------------------------------------------------


def raw_files_from_splits(movies_dir: Path, out_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Raw-format review and meta files holding every interaction of the Movies split files.

    Each user's interactions are history.jsonl.gz's, then the valid and the test target. Their
    timestamps come from the train/valid/test rows; the first `min_history` (3) history
    interactions of a user are no train row and have none, so they get increasing ones just
    before the user's first known timestamp (1 ms apart). Each item's "Title, categories" text
    becomes a meta record.

    What cannot round-trip, and why it does not matter for the four files:
    - the meta record's `title` / `categories` boundary: a text "A, B, C|D" may be title "A, B"
      with categories [C, D] or title "A" with ["B, C", "D"] (18 Movies items have categories with
      ", ", e.g. "Presley, Elvis"); any choice gives back the same text. Here the text is split
      at its LAST ", " (so "Presley, Elvis" items get title "..., Movies & TV|Music Artists|Presley"
      and category "Elvis"); `main_category`, `details`, `features`, `description` are not in
      the split files at all, and the text is made from neither of them;
    - the real timestamps of the first three history interactions of each user (only their
      order is known), and the review `title`/`text`/`asin`/`helpful_vote`/... fields, which the
      split files never carry.
    The reviews are written in a shuffled order, so the build cannot lean on the file order.
    """
    history = [json.loads(line) for line in read_lines(movies_dir / "history.jsonl.gz")]
    splits = {name: [json.loads(line) for line in read_lines(movies_dir / f"{name}.jsonl.gz")]
              for name in ("train", "valid", "test")}
    known_time = {(row["user_id"], row["parent_asin"]): row["timestamp"] for rows in splits.values() for row in rows}
    targets = {name: {row["user_id"]: row for row in splits[name]} for name in ("valid", "test")}
    texts: dict[str, str] = {}
    reviews = []
    for row in history:
        user = row["user_id"]
        lines = row["history"].split("\n")
        interactions = [(asin, rating, line.rsplit(", ", 1)[0])
                        for asin, rating, line in zip(row["history_asins"], row["history_ratings"], lines, strict=True)]
        interactions += [(targets[name][user]["parent_asin"], targets[name][user]["label"], targets[name][user]["target"])
                         for name in ("valid", "test")]
        unknown = [asin for asin, _, _ in interactions if (user, asin) not in known_time]
        first_known = min(known_time[(user, asin)] for asin, _, _ in interactions if (user, asin) in known_time)
        for asin, rating, text in interactions:
            stamp = known_time.get((user, asin))
            if stamp is None:  # increasing, 1 ms apart, just before the first known one
                stamp = first_known - len(unknown) + unknown.index(asin)
            reviews.append({"rating": float(rating), "title": "", "text": "", "images": [], "asin": asin,
                            "parent_asin": asin, "user_id": user, "timestamp": stamp, "helpful_vote": 0,
                            "verified_purchase": True})
            texts[asin] = text
    random.Random(seed).shuffle(reviews)
    meta = []
    for asin, text in texts.items():
        title, categories = text.rsplit(", ", 1)
        meta.append({"main_category": "Movies & TV", "title": title, "categories": categories.split("|") if categories else [],
                     "details": {}, "parent_asin": asin})
    out_dir.mkdir(parents=True, exist_ok=True)
    return (write_jsonl_gz(out_dir / "Movies.jsonl.gz", reviews), write_jsonl_gz(out_dir / "meta_Movies.jsonl.gz", meta))


@pytest.mark.slow
def test_round_trip_rebuilds_the_movies_files_byte_for_byte(movies_dir, tmp_path):
    reviews, meta = raw_files_from_splits(movies_dir, tmp_path / "raw")
    proc = build(tmp_path, "Movies", reviews, meta)
    out = tmp_path / "data" / "Movies"
    for name in FILES:
        built, published = read_lines(out / f"{name}.jsonl.gz"), read_lines(movies_dir / f"{name}.jsonl.gz")
        assert len(built) == len(published), name
        differ = next((i for i, (a, b) in enumerate(zip(built, published, strict=True)) if a != b), None)
        assert differ is None, f"{name}.jsonl.gz line {differ + 1}:\nbuilt     {built[differ][:300]}\npublished {published[differ][:300]}"
    stats = json.loads((out / "stats.json").read_text())
    assert stats["table"] == {"Train": 22097, "Valid": 2629, "Test": 2629, "User": 2629, "Item": 10874}
    assert stats["table_row"] == "| Movies | 22,097 | 2,629 | 2,629 | 2,629 | 10,874 |"
    assert stats["interactions"] == 35242 and sum(stats["ratings"].values()) == 35242
    assert stats["labels"]["test"]["5.0"] == 1642  # 62% of the test labels are fives
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["item_noun"] == "movie" and manifest["counts"]["Train"] == 22097
    assert "train 22,097 / valid 2,629 / test 2,629 rows, 2,629 users, 10,874 items" in proc.stdout


# ---------------------------------------------------------------------------------------------
# A synthetic raw category with every edge case
# ---------------------------------------------------------------------------------------------

CATEGORY = "Board_Games"


def review(user: str, item: str, stamp: int, rating: float = 4.0) -> dict:
    return {"rating": rating, "title": "fine", "text": "a review", "images": [], "asin": f"{item}-x",
            "parent_asin": item, "user_id": user, "timestamp": stamp, "helpful_vote": 0, "verified_purchase": True}


RAW_META = [
    {"main_category": "Toys & Games", "title": "Catan", "categories": ["Toys & Games", "Games", "Board Games"],
     "details": {"Brand": "Kosmos"}, "parent_asin": "G01"},
    {"main_category": "Toys & Games", "title": "Go, the game", "categories": ["Games", "Strategy"], "parent_asin": "G02"},
    {"title": "Chess", "categories": ["Games"], "parent_asin": "G03"},
    {"title": "Chess", "categories": ["Games", "Ignored: a later record of G03"], "parent_asin": "G03"},
    {"title": "Dixit", "categories": ["Games", "Party"], "parent_asin": "G04"},
    {"title": "Azul", "categories": "Tiles", "parent_asin": "G05"},  # a string, not a list
    {"title": "Risk", "categories": ["Games", None, "War"], "parent_asin": "G06"},
    {"title": "Blank box", "categories": [], "parent_asin": "G07"},  # no categories: "Blank box, "
    {"title": "Two\nlines", "categories": ["Games"], "parent_asin": "G08"},  # one history line per item
    {"title": None, "categories": ["Games"], "parent_asin": "G09"},  # no title: as if absent
    {"title": "Never reviewed", "categories": ["Games"], "parent_asin": "G99"},
]

RAW_REVIEWS = [
    # U1: G02 twice; the later review (t=7000, rating 1) is kept, so G02 is the last, the test target
    review("U1", "G01", 1000, 5.0), review("U1", "G02", 2000, 3.0), review("U1", "G03", 3000, 4.0),
    review("U1", "G04", 4000, 2.0), review("U1", "G05", 5000, 5.0), review("U1", "G06", 6000, 1.0),
    review("U1", "G02", 7000, 1.0),
    # U2: G03 and G01 at the same time: G01 comes first (parent_asin order), whatever the file order
    review("U2", "G03", 100, 2.0), review("U2", "G01", 100, 4.0), review("U2", "G07", 200, 3.0),
    review("U2", "G08", 300, 5.0), review("U2", "G05", 400, 4.0),
    # U3: four reviews, under the 5-core
    review("U3", "G01", 10, 5.0), review("U3", "G02", 20, 5.0), review("U3", "G03", 30, 5.0), review("U3", "G04", 40, 5.0),
    # U4: five reviews, two of items without a usable meta record: three left, under the 5-core
    review("U4", "G01", 10, 1.0), review("U4", "GHOST", 20, 1.0), review("U4", "G09", 30, 1.0),
    review("U4", "G02", 40, 1.0), review("U4", "G03", 50, 1.0),
    # U5: six reviews; the first is before --since 60 in the window test
    review("U5", "G06", 50, 3.0), review("U5", "G05", 60, 4.0), review("U5", "G04", 70, 5.0),
    review("U5", "G03", 80, 2.0), review("U5", "G02", 90, 1.0), review("U5", "G01", 100, 4.0),
]


def reference_build(reviews: list[dict], meta: list[dict], k: int = 5, min_history: int = 3,
                    since: int | None = None, until: int | None = None) -> dict[str, list[dict]]:
    """The protocol of data/README.md with plain dictionaries, no code shared with siren.raw_reviews or siren.category_splits."""
    texts: dict[str, str | None] = {}
    for record in meta:
        if record["parent_asin"] in texts:
            continue
        categories = record.get("categories") or []
        categories = [categories] if isinstance(categories, str) else [c for c in categories if c]
        title = record.get("title")
        texts[record["parent_asin"]] = f"{title.replace(chr(10), ' ')}, {'|'.join(categories)}" if title else None
    latest: dict[tuple, tuple] = {}
    for line, row in enumerate(reviews, start=1):
        if (since is not None and row["timestamp"] < since) or (until is not None and row["timestamp"] >= until):
            continue
        key = (row["user_id"], row["parent_asin"])
        if key not in latest or (row["timestamp"], line) > latest[key][:2]:
            latest[key] = (row["timestamp"], line, row["rating"])
    by_user: dict[str, list] = {}
    for (user, item), (stamp, _, rating) in latest.items():
        if texts.get(item):
            by_user.setdefault(user, []).append((stamp, item, rating))
    out: dict[str, list[dict]] = {name: [] for name in FILES}
    for user in sorted(u for u, rows in by_user.items() if len(rows) >= k):
        rows = sorted(by_user[user])
        held = rows[:-2]
        for j in range(min_history, len(held)):
            stamp, item, rating = held[j]
            out["train"].append({"user_id": user, "parent_asin": item, "timestamp": stamp, "label": float(rating),
                                 "target": texts[item],
                                 "history": "\n".join(f"{texts[i]}, {float(r)}" for _, i, r in held[:j])})
        lines = [f"{texts[i]}, {int(r)}" for _, i, r in held]
        for name, (stamp, item, rating) in zip(("valid", "test"), rows[-2:], strict=True):
            out[name].append({"user_id": user, "parent_asin": item, "timestamp": stamp, "label": float(rating),
                              "target": texts[item], "history": "".join(line + "\n" for line in lines)})
        out["history"].append({"user_id": user, "history": "\n".join(lines), "history_asins": [i for _, i, _ in held],
                               "history_ratings": [int(r) for _, _, r in held]})
    return out


@pytest.fixture
def raw_files(tmp_path) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    raw.mkdir()
    shuffled = list(RAW_REVIEWS)
    random.Random(3).shuffle(shuffled)
    return (write_jsonl_gz(raw / f"{CATEGORY}.jsonl.gz", shuffled), write_jsonl_gz(raw / f"meta_{CATEGORY}.jsonl.gz", RAW_META))


def built_rows(out: Path) -> dict[str, list[dict]]:
    return {name: [json.loads(line) for line in read_lines(out / f"{name}.jsonl.gz")] for name in FILES}


def test_synthetic_category_follows_the_protocol(raw_files, tmp_path):
    reviews, meta = raw_files
    proc = build(tmp_path, CATEGORY, reviews, meta, "--max_missing_meta", "0.1")
    out = tmp_path / "data" / CATEGORY
    rows = built_rows(out)
    file_order = [json.loads(line) for line in read_lines(reviews)]
    assert rows == reference_build(file_order, RAW_META)

    # by hand: users in id order; U3 (4 reviews) and U4 (3 usable) are under the 5-core
    assert [r["user_id"] for r in rows["history"]] == ["U1", "U2", "U5"]
    u1, u2 = rows["history"][0], rows["history"][1]
    # the repeated G02 review: the later one (t=7000, rating 1) is kept, so G02 is U1's test target
    assert u1["history_asins"] == ["G01", "G03", "G04", "G05"] and u1["history_ratings"] == [5, 4, 2, 5]
    assert [(r["parent_asin"], r["timestamp"], r["label"]) for r in rows["test"]][0] == ("G02", 7000, 1.0)
    # equal timestamps: parent_asin order (G01 before G03), although G03 came first in RAW_REVIEWS
    assert u2["history_asins"] == ["G01", "G03", "G07"]
    assert u2["history"] == "Catan, Toys & Games|Games|Board Games, 4\nChess, Games, 2\nBlank box, , 3"
    valid_u2 = rows["valid"][1]
    assert valid_u2["target"] == "Two lines, Games" and valid_u2["history"] == u2["history"] + "\n"
    assert rows["test"][1]["history"] == valid_u2["history"]  # test does not see the valid target
    # train: one row per history interaction with 3 earlier ones; ratings printed 3.0 there
    assert [(r["user_id"], r["parent_asin"]) for r in rows["train"]] == [("U1", "G05"), ("U5", "G03")]
    assert rows["train"][0]["history"] == ("Catan, Toys & Games|Games|Board Games, 5.0\nChess, Games, 4.0\n"
                                           "Dixit, Games|Party, 2.0")
    assert "Azul, Tiles, 5.0" not in rows["train"][0]["history"]
    # the files are what the stages read
    for name in ("train", "valid", "test"):
        assert len(load_split(out / f"{name}.jsonl.gz")) == len(rows[name])
    assert len(load_history(out / "history.jsonl.gz")) == 3

    stats = json.loads((out / "stats.json").read_text())
    assert stats["table"] == {"Train": 2, "Valid": 3, "Test": 3, "User": 3, "Item": 8}
    filters = stats["filters"]
    assert (filters["review_lines"], filters["duplicate_reviews_dropped"], filters["reviews_missing_meta"],
            filters["items_missing_meta"], filters["reviews_item_without_title"], filters["users_below_k_core"],
            filters["reviews_below_k_core"], filters["meta_repeated_records"]) == (27, 1, 2, 2, 1, 2, 7, 1)
    assert stats["ratings"] == {"1.0": 3, "2.0": 3, "3.0": 2, "4.0": 5, "5.0": 4}
    # the repeated review and the reviews without meta are reported, one line each
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "1 review(s) repeat an earlier (user_id, parent_asin)" in warnings[0] and "('U1', 'G02')" in warnings[0]
    assert "2 review(s) of 2 item(s) without a usable record" in warnings[1] and "1 absent, 1 without a title" in warnings[1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["item_noun"] == "board game" and manifest["args"]["k_core"] == 5
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{n}.jsonl.gz" for n in FILES), "stats.json",
                                                            "manifest.json"])

    # the same raw data gives the same bytes; an existing build is refused before any reading
    again = build(tmp_path, CATEGORY, reviews, meta, "--max_missing_meta", "0.1", check=False)
    assert_refused(again, "--overwrite")
    before = (out / "train.jsonl.gz").read_bytes()
    build(tmp_path, CATEGORY, reviews, meta, "--max_missing_meta", "0.1", "--overwrite")
    assert (out / "train.jsonl.gz").read_bytes() == before


def test_window_sample_and_settings(raw_files, tmp_path):
    reviews, meta = raw_files
    file_order = [json.loads(line) for line in read_lines(reviews)]
    settings = BuildSettings(since=60, max_missing_meta=0.1)
    plan = plan_build(reviews, meta, settings)
    assert plan.report["reviews_outside_window"] == 10  # U3 and U4 (all before 60) and U5's first
    assert plan.report["reviews_outside_window"] == sum(r["timestamp"] < 60 for r in RAW_REVIEWS)
    out = tmp_path / "window"
    out.mkdir()
    from siren.category_splits import write_splits

    write_splits(out, plan.reviews, plan.texts, settings.min_history)
    assert built_rows(out) == reference_build(file_order, RAW_META, since=60)
    # U5 without its first review still has five
    assert [r["user_id"] for r in built_rows(out)["history"]] == ["U1", "U2", "U5"]

    # the window comes before the repeats: before 6500 U1 reviewed G02 once (t=2000)
    until = plan_build(reviews, meta, BuildSettings(until=6500, max_missing_meta=0.1))
    assert until.report["duplicate_reviews_dropped"] == 0
    g02 = until.reviews.item_ids.index("G02")
    u1 = until.reviews.user_ids.index("U1")
    assert until.reviews.timestamps[(until.reviews.users == u1) & (until.reviews.items == g02)].tolist() == [2000]
    until = plan_build(reviews, meta, BuildSettings(until=4500, max_missing_meta=0.1))
    assert {until.reviews.user_ids[u] for u in until.reviews.users.tolist()} == {"U2", "U5"}  # U1 has 4 left

    def sampled(seed: int, path: Path) -> set[str]:
        plan = plan_build(path, meta, BuildSettings(max_users=2, seed=seed, max_missing_meta=0.1))
        assert plan.report["users_sampled_out"] == 1
        return {plan.reviews.user_ids[u] for u in plan.reviews.users.tolist()}

    # the sample depends on the seed, not on the order of the review file
    reordered = write_jsonl_gz(tmp_path / "reordered.jsonl.gz", list(reversed(file_order)))
    assert sampled(0, reviews) == sampled(0, reordered)
    assert len({frozenset(sampled(seed, reviews)) for seed in range(6)}) > 1

    # --item_k_core 2: G07 and G08 (U2's only) go, which leaves U2 with three reviews: a second pass
    plan = plan_build(reviews, meta, BuildSettings(item_k_core=2, max_missing_meta=0.1))
    assert {plan.reviews.user_ids[u] for u in plan.reviews.users.tolist()} == {"U1", "U5"}
    assert plan.report["k_core_passes"] == 2
    assert np.bincount(plan.reviews.items)[np.unique(plan.reviews.items)].min() >= 2


def test_k_core_repeats_until_stable():
    # the first pass drops d and u4 (one review each); that leaves u3 and e with one: a second pass
    pairs = [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (2, 2), (3, 3), (3, 4), (4, 4)]
    users = np.array([u for u, _ in pairs], dtype=np.int32)
    items = np.array([i for _, i in pairs], dtype=np.int32)
    keep, passes = k_core_mask(users, items, user_k=2, item_k=2)
    assert keep.tolist() == [True] * 6 + [False] * 3 and passes == 2
    keep, passes = k_core_mask(users, items, user_k=2)
    assert keep.tolist() == [True] * 8 + [False] and passes == 1


def test_units_time_bounds_texts_rows():
    assert parse_time_bound("2015-01-01") == 1420070400000 == parse_time_bound("1420070400000")
    assert parse_time_bound("2015-01-01T01:00:00+01:00") == 1420070400000
    with pytest.raises(ValueError, match="ISO date"):
        parse_time_bound("last week")
    assert item_text({"title": "A, B", "categories": ["C, D", "E"]}) == "A, B, C, D|E"
    assert item_text({"title": "T"}) == "T, " and item_text({"title": "  "}) is None and item_text({}) is None
    assert dump_row({"a": "x/y", "b": "é", "c": 1.0}) == '{"a":"x\\/y","b":"é","c":1.0}'


# ---------------------------------------------------------------------------------------------
# Bad raw data: one line naming the file and line, nothing written
# ---------------------------------------------------------------------------------------------


def _with(index: int, **changes) -> list[dict]:
    rows = [dict(row) for row in RAW_REVIEWS]
    for key, value in changes.items():
        if value is KeyError:
            del rows[index][key]
        else:
            rows[index][key] = value
    return rows


BAD_REVIEWS = {
    "rating not a number": (_with(2, rating="five"), r"Board_Games\.jsonl\.gz:3: rating .*not a number"),
    "rating as a string": (_with(2, rating="4"), r"Board_Games\.jsonl\.gz:3: rating .*not a number"),
    "rating a boolean": (_with(2, rating=True), r"Board_Games\.jsonl\.gz:3: rating .*not a number"),
    "rating above 5": (_with(4, rating=6.0), r"Board_Games\.jsonl\.gz:5: rating 6\.0 is outside 1-5"),
    "rating 0": (_with(4, rating=0), r"Board_Games\.jsonl\.gz:5: rating 0 is outside 1-5"),
    "rating missing": (_with(1, rating=KeyError), r"Board_Games\.jsonl\.gz:2: missing field\(s\) rating"),
    "parent_asin missing": (_with(6, parent_asin=KeyError), r"Board_Games\.jsonl\.gz:7: missing field\(s\) parent_asin"),
    "parent_asin null": (_with(6, parent_asin=None), r"Board_Games\.jsonl\.gz:7: missing field\(s\) parent_asin"),
    "parent_asin empty": (_with(6, parent_asin=""), r"Board_Games\.jsonl\.gz:7: parent_asin must be a non-empty string"),
    "user_id a number": (_with(0, user_id=7), r"Board_Games\.jsonl\.gz:1: user_id must be a non-empty string"),
    "timestamp a string": (_with(0, timestamp="today"), r"Board_Games\.jsonl\.gz:1: timestamp must be a finite number"),
    "timestamp a fraction": (_with(0, timestamp=1.5), r"Board_Games\.jsonl\.gz:1: timestamp 1\.5 is not a whole number"),
}


def _run_builder(tmp_path: Path, reviews: Path, meta: Path, *extra: str):
    return run_in_process(SCRIPT, "--category", CATEGORY, "--reviews", str(reviews), "--meta", str(meta),
                          "--output_root", str(tmp_path / "data"), *extra, check=False)


def _assert_one_line_and_nothing_written(run, pattern: str, tmp_path: Path) -> None:
    assert_refused(run, re.compile(pattern), only_line=True)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("case", sorted(BAD_REVIEWS))
def test_bad_review_line_is_one_line_and_nothing_is_written(case, tmp_path):
    rows, pattern = BAD_REVIEWS[case]
    reviews = write_jsonl_gz(tmp_path / f"{CATEGORY}.jsonl.gz", rows)
    meta = write_jsonl_gz(tmp_path / f"meta_{CATEGORY}.jsonl.gz", RAW_META)
    run = _run_builder(tmp_path, reviews, meta, "--max_missing_meta", "0.1")
    _assert_one_line_and_nothing_written(run, pattern, tmp_path)


def test_bad_files_are_one_line_and_nothing_is_written(tmp_path):
    reviews = write_jsonl_gz(tmp_path / f"{CATEGORY}.jsonl.gz", RAW_REVIEWS)
    meta = write_jsonl_gz(tmp_path / f"meta_{CATEGORY}.jsonl.gz", RAW_META)
    # more reviews without meta than --max_missing_meta (default 0.05) allows: 2 of 26 after the repeat
    run = _run_builder(tmp_path, reviews, meta)
    _assert_one_line_and_nothing_written(
        run, r"2 review\(s\) of 2 item\(s\) without a usable record in .*meta_Board_Games\.jsonl\.gz .*7\.69% "
                   r"of the reviews; first 'GHOST' at .*Board_Games\.jsonl\.gz:\d+: more than --max_missing_meta 0\.05",
        tmp_path)

    # a truncated review file: the gzip stream ends early
    whole = reviews.read_bytes()
    truncated = tmp_path / "cut" / f"{CATEGORY}.jsonl.gz"
    truncated.parent.mkdir()
    truncated.write_bytes(whole[: len(whole) // 2])
    run = _run_builder(tmp_path, truncated, meta, "--max_missing_meta", "0.1")
    _assert_one_line_and_nothing_written(run, r"cut/Board_Games\.jsonl\.gz: (truncated|corrupt) gzip", tmp_path)

    # a truncated meta file, a meta record without parent_asin, a line that is not JSON
    cut_meta = tmp_path / "cut" / f"meta_{CATEGORY}.jsonl.gz"
    cut_meta.write_bytes(meta.read_bytes()[:-12])
    run = _run_builder(tmp_path, reviews, cut_meta, "--max_missing_meta", "0.1")
    _assert_one_line_and_nothing_written(run, r"meta_Board_Games\.jsonl\.gz: (truncated|corrupt) gzip", tmp_path)
    no_id = write_jsonl_gz(tmp_path / "meta_no_id.jsonl.gz", [RAW_META[0], {"title": "X", "categories": []}])
    run = _run_builder(tmp_path, reviews, no_id, "--max_missing_meta", "0.1")
    _assert_one_line_and_nothing_written(run, r"meta_no_id\.jsonl\.gz:2: missing field\(s\) parent_asin", tmp_path)
    with gzip.open(tmp_path / "broken.jsonl.gz", "wt") as handle:
        handle.write(json.dumps(RAW_REVIEWS[0]) + "\n{not json\n")
    run = _run_builder(tmp_path, tmp_path / "broken.jsonl.gz", meta)
    _assert_one_line_and_nothing_written(run, r"broken\.jsonl\.gz:2: not valid JSON", tmp_path)

    # a missing file; no user left; settings that cannot work
    run = _run_builder(tmp_path, tmp_path / "nope.jsonl.gz", meta)
    _assert_one_line_and_nothing_written(run, r"missing review file: .*nope\.jsonl\.gz .*get_data\.sh --raw", tmp_path)
    run = _run_builder(tmp_path, reviews, meta, "--max_missing_meta", "0.1", "--k_core", "9")
    _assert_one_line_and_nothing_written(run, r"no user has 9 or more usable reviews", tmp_path)
    run = _run_builder(tmp_path, reviews, meta, "--k_core", "2")
    _assert_one_line_and_nothing_written(run, r"--k_core must be at least 3", tmp_path)
    run = _run_builder(tmp_path, reviews, meta, "--since", "2020-01-01", "--until", "2019-01-01")
    _assert_one_line_and_nothing_written(run, r"--since .* must be earlier than --until", tmp_path)


def test_a_bad_date_or_share_is_refused():
    bad = run_in_process(SCRIPT, "--category", "X", "--reviews", "r", "--meta", "m", "--since", "soon", check=False)
    assert_refused(bad, "ISO date", only_line=True)  # argparse's type check, in one line
    bad = run_in_process(SCRIPT, "--category", "X", "--reviews", "r", "--meta", "m", "--max_missing_meta", "2",
                         check=False)
    assert_refused(bad, "share from 0 to 1", only_line=True)


# ---------------------------------------------------------------------------------------------
# scripts/get_data.sh --raw
# ---------------------------------------------------------------------------------------------


def _get_data(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "get_data.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=300)


def test_get_data_raw_names_the_missing_files_and_builds_once_they_are_there(tmp_path):
    raw = tmp_path / "raw"
    out_root = tmp_path / "data"
    proc = _get_data("--raw", "Books", "--raw_dir", str(raw), "--output_root", str(out_root))
    assert proc.returncode == 1
    assert "missing  Books.jsonl.gz (the reviews): https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023/raw/" \
           "review_categories/Books.jsonl.gz" in proc.stderr
    assert "missing  meta_Books.jsonl.gz (the item metadata): " in proc.stderr
    assert f"download them into {raw}/" in proc.stderr
    assert not out_root.exists() and not raw.exists()

    raw.mkdir()
    write_jsonl_gz(raw / "Books.jsonl.gz", RAW_REVIEWS)
    proc = _get_data("--raw", "Books", "--raw_dir", str(raw), "--output_root", str(out_root))
    assert proc.returncode == 1 and f"found    {raw}/Books.jsonl.gz" in proc.stderr and "meta_Books" in proc.stderr

    # the uncompressed .jsonl of the Hugging Face copy works too; builder flags pass through
    (raw / "meta_Books.jsonl").write_text("".join(json.dumps(row) + "\n" for row in RAW_META))
    proc = _get_data("--raw", "Books", "--raw_dir", str(raw), "--output_root", str(out_root), "--max_missing_meta", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert "Books: train 2 / valid 3 / test 3 rows, 3 users" in proc.stdout
    assert json.loads((out_root / "Books" / "stats.json").read_text())["table"]["User"] == 3
    assert json.loads((out_root / "Books" / "manifest.json").read_text())["item_noun"] == "book"
    bad = _get_data("--raw")
    assert bad.returncode == 2 and "usage" in bad.stderr


# ---------------------------------------------------------------------------------------------
# Stages 1 and 2 on a built category that is neither Movies nor Books
# ---------------------------------------------------------------------------------------------

THEMES = {
    "Lego": ("Lego Brick Set", ["Toys & Games", "Building Toys", "Construction Sets"]),
    "Puzzle": ("Jigsaw Puzzle 1000 Pieces", ["Toys & Games", "Puzzles", "Jigsaw Puzzles"]),
    "Doll": ("Fashion Doll House", ["Toys & Games", "Dolls & Accessories", "Dollhouses"]),
}


@pytest.mark.slow
def test_stages_1_and_2_run_on_a_built_category_with_its_item_noun(tmp_path):
    import pandas as pd

    category = "Toys_and_Games"
    assert item_noun(category) == "toy"
    meta, reviews = [], []
    for theme, (title, categories) in THEMES.items():
        for j in range(6):
            meta.append({"parent_asin": f"{theme}{j}", "title": f"{title} No. {j}", "categories": categories,
                         "main_category": "Toys & Games", "details": {}})
    rng = random.Random(0)
    for u in range(10):
        loved = list(THEMES)[u % 3]
        for t, item in enumerate(rng.sample([m["parent_asin"] for m in meta], 7)):
            reviews.append(review(f"U{u:02d}", item, 1000 * t + u, 5.0 if item.startswith(loved) else 2.0))
    raw = tmp_path / "raw"
    raw.mkdir()
    build(tmp_path, category, write_jsonl_gz(raw / f"{category}.jsonl.gz", reviews),
          write_jsonl_gz(raw / f"meta_{category}.jsonl.gz", meta))
    data_root = tmp_path / "data"

    sketch_dir = tmp_path / "sketch"
    run_in_process("generate_interest_sketch.py", "--category", category, "--data_root", str(data_root),
               "--encoder_model", "minilm", "--n_clusters", "3", "--top_k", "3", "--threads", "1",
               "--output_dir", str(sketch_dir), "--cache_dir", str(tmp_path / "cache"))
    sketches = [json.loads(line)["user_profile_prompt"] for line in (sketch_dir / "user_feature.jsonl").open()]
    assert len(sketches) == 10 and any(sketches)
    assert all("Topics of toys" in s for s in sketches if s)

    verl_dir = tmp_path / "verl"
    run_in_process("preprocess_grpo.py", "--category", category, "--data_root", str(data_root), "--max_history", "3",
               "--use_long_history", "true", "--sketch_path", str(sketch_dir / "user_feature.jsonl"),
               "--output_dir", str(verl_dir))
    train = pd.read_parquet(verl_dir / "train.parquet")
    assert len(train) == 10 * 2  # 5 history interactions each, 2 of them with 3 earlier ones
    assert set(train["data_source"]) == {f"AmazonReviews/{category}"}
    for prompt in train["prompt"]:
        system, user = prompt[0]["content"], prompt[1]["content"]
        assert "candidate toy" in system.lower() and "candidate toy" in user.lower()
        assert "movie" not in system + user and "book" not in system + user
    assert sum("Topics of toys" in prompt[1]["content"] for prompt in train["prompt"]) > 0


# ---------------------------------------------------------------------------------------------
# The streaming benchmark's script, on a small file
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_script_builds_the_file_it_generates(tmp_path):
    proc = run_in_process("scripts/bench_build_category.py", "--lines", "3000", "--text_chars", "50", "300",
                      "--max_users", "40", "--work_dir", str(tmp_path / "work"), "--output_dir", str(tmp_path / "out"))
    result = json.loads((tmp_path / "out" / "bench_build_category.json").read_text())
    first, second = result["runs"]
    assert first["review_lines"] == second["review_lines"] == 3000
    assert second["reviews_gz_bytes"] > 2 * first["reviews_gz_bytes"]  # longer texts, same interactions
    assert first["stats"]["table"] == second["stats"]["table"] and first["stats"]["table"]["User"] == 40
    assert first["stats"]["filters"]["users_below_k_core"] > 0  # most generated users have few reviews
    for run in (first, second):
        assert run["peak_rss_mb"] > 0 and run["review_lines_per_s_reading"] > 0
        assert set(run["phase_seconds"]) == {"reading_reviews", "dropping_repeats", "reading_meta", "filtering",
                                             "writing"}
    assert result["machine"]["cores"] == os.cpu_count()
    assert "review lines/s" in proc.stdout


def test_the_output_folder_may_not_hold_the_raw_files(tmp_path):
    """Issue 20: no stage writes into a folder that holds its own inputs (here the raw review file)."""
    folder = tmp_path / "data" / CATEGORY
    folder.mkdir(parents=True)
    reviews = write_jsonl_gz(folder / f"{CATEGORY}.jsonl.gz", RAW_REVIEWS)
    meta = write_jsonl_gz(tmp_path / f"meta_{CATEGORY}.jsonl.gz", RAW_META)
    run = _run_builder(tmp_path, reviews, meta, "--overwrite")
    assert_refused(run, "(--output_root) holds this stage's input", only_line=True)
    assert sorted(p.name for p in folder.iterdir()) == [f"{CATEGORY}.jsonl.gz"]
