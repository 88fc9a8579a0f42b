"""tests/synthetic_data.py: the synthetic dataset follows data/README.md and has the properties the
stage tests rely on (they would otherwise pass for the wrong reason)."""

from __future__ import annotations

from collections import Counter

import pytest
from synthetic_data import synthetic_rows, write_synthetic_category

from siren.data import history_lines, load_history, load_split, parse_history_line, split_item_text


@pytest.fixture(scope="module")
def files(synthetic_root) -> dict[str, list[dict]]:
    """The four files as the stages read them (siren.data validates every row)."""
    category = synthetic_root / "Movies"
    return {"history": load_history(category / "history.jsonl.gz"),
            **{split: load_split(category / f"{split}.jsonl.gz") for split in ("train", "valid", "test")}}


def _interactions(history: str) -> list[tuple[str, float]]:
    return [(parse_history_line(line).text, parse_history_line(line).rating) for line in history_lines(history)]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    write_synthetic_category(tmp_path / "a")
    write_synthetic_category(tmp_path / "b")
    for name in ("train", "valid", "test", "history"):
        assert (tmp_path / "a" / f"{name}.jsonl.gz").read_bytes() == (tmp_path / "b" / f"{name}.jsonl.gz").read_bytes()
    assert synthetic_rows(seed=1)["test"] != synthetic_rows(seed=0)["test"]
    assert len(synthetic_rows(n_users=12)["history"]) == 12


def test_rows_follow_the_data_readme(files):
    users = [row["user_id"] for row in files["history"]]
    assert len(users) == len(set(users)) == 40
    assert [row["user_id"] for row in files["valid"]] == users == [row["user_id"] for row in files["test"]]
    for row in files["history"]:
        assert len(history_lines(row["history"])) == len(row["history_asins"]) == len(row["history_ratings"])
        assert [rating for _, rating in _interactions(row["history"])] == row["history_ratings"]
    for split in ("train", "valid", "test"):
        for row in files[split]:
            title, categories = split_item_text(row["target"])
            assert title and categories.startswith("Movies & TV|") and row["label"] in (1.0, 2.0, 3.0, 4.0, 5.0)


def test_histories_are_earlier_interactions_and_hold_no_evaluation_target(files):
    history = {row["user_id"]: row for row in files["history"]}
    train_by_user: dict[str, list[dict]] = {}
    for row in files["train"]:
        train_by_user.setdefault(row["user_id"], []).append(row)
    for valid, test in zip(files["valid"], files["test"], strict=True):
        user = history[valid["user_id"]]
        # valid and test share the user's whole history, the text of history.jsonl.gz
        assert valid["history"] == test["history"] == user["history"]
        assert valid["parent_asin"] not in user["history_asins"] and test["parent_asin"] not in user["history_asins"]
        assert valid["timestamp"] < test["timestamp"]
        rows = train_by_user.get(user["user_id"], [])
        # train row k: target = interaction 3 + k, history = every interaction before it, oldest first
        assert [r["parent_asin"] for r in rows] == user["history_asins"][3:]
        full = _interactions(user["history"])
        for k, row in enumerate(rows):
            assert _interactions(row["history"]) == full[: 3 + k]
            assert (row["target"], row["label"]) == full[3 + k]
        assert [r["timestamp"] for r in rows] == sorted(r["timestamp"] for r in rows)
        assert not rows or rows[-1]["timestamp"] < valid["timestamp"]


def test_properties_the_stage_tests_rely_on(files):
    users_without_history = [row for row in files["history"] if not row["history_asins"]]
    assert len(users_without_history) == 2
    train_users = {row["user_id"] for row in files["train"]}
    train_items = {row["parent_asin"] for row in files["train"]}
    assert sum(row["user_id"] not in train_users for row in files["test"]) >= 4  # cold users
    assert sum(row["parent_asin"] not in train_items for row in files["test"]) >= 4  # cold items
    labels = Counter(row["label"] for split in ("train", "test") for row in files[split])
    assert labels.most_common(1)[0][0] == 5.0 and labels[5.0] > 0.5 * sum(labels.values())
    assert len(labels) == 5

    texts = {row["target"] for split in ("train", "valid", "test") for row in files[split]}
    texts |= {parse_history_line(line).text for row in files["history"] for line in history_lines(row["history"])}
    assert 200 <= len(texts) <= 400
    assert sum(", " in split_item_text(text)[0] for text in texts) >= 10  # titles with commas
    assert any(not text.isascii() for text in texts)
    # no item text inside another's: "this history line is (not) in the prompt" stays unambiguous
    assert not [(a, b) for a in texts for b in texts if a != b and a in b]
    # the real train file writes ratings as "5.0", history.jsonl.gz and valid/test as "5"
    assert files["train"][0]["history"].splitlines()[0].endswith(".0")
    assert not files["test"][0]["history"].splitlines()[0].endswith(".0")
