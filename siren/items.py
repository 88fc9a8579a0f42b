"""Stage 1's item table: every item the topics are built from, with the text the encoder reads.

Two sources: an Amazon Reviews 2023 meta file (`items_from_meta`), or, without one, the data files
themselves (`items_from_data`: the history lines of `history.jsonl.gz` and the split targets).
Items are ordered by id, so the table never depends on file order.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from siren import SirenError
from siren.data import history_lines, iter_jsonl, parse_history_line, split_item_text


@dataclass
class ItemTable:
    """Every item the topics are built from. `texts` are encoded; titles and categories name topics."""

    item_ids: list[str]
    texts: list[str]
    titles: list[str]
    categories: list[list[str]]
    source: str
    conflicting_texts: int = 0  # ids seen with two different texts (the first one is kept)

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.item_ids)}

    @classmethod
    def from_found(cls, found: dict[str, tuple], source: str, conflicting_texts: int) -> ItemTable:
        """Build from {item_id: (text, title, categories)}, items sorted by id."""
        ids = sorted(found)
        return cls(
            item_ids=ids,
            texts=[found[i][0] for i in ids],
            titles=[found[i][1] for i in ids],
            categories=[found[i][2] for i in ids],
            source=source,
            conflicting_texts=conflicting_texts,
        )


def _split_categories(categories: str) -> list[str]:
    return [c.strip() for c in categories.split("|") if c.strip()]


def items_from_data(history_rows: list[dict], split_rows: Iterable[dict], history_path: str = "history") -> ItemTable:
    """Item texts derived from the data files: history lines (aligned with `history_asins`) and targets.

    A history line is "Title, categories, rating" and a target "Title, categories"; titles may hold
    commas, so both are split from the right. Items are ordered by id so the table does not depend
    on file order.
    """
    found: dict[str, tuple[str, str, list[str]]] = {}
    conflicts = 0

    def add(item_id: str, title: str, categories: str) -> None:
        nonlocal conflicts
        text = f"{title}, {categories}" if categories else title
        if not text.strip():
            return
        known = found.get(item_id)
        if known is None:
            found[item_id] = (text, title, _split_categories(categories))
        elif known[0] != text:
            conflicts += 1

    for row in history_rows:
        lines = history_lines(row["history"])
        asins = row["history_asins"]
        if len(lines) != len(asins):
            raise SirenError(
                f"{history_path}: user {row['user_id']} has {len(lines)} history lines but {len(asins)} history_asins; "
                "they must be aligned to name the items"
            )
        for line, asin in zip(lines, asins, strict=True):
            parsed = parse_history_line(line)
            add(str(asin), parsed.title, parsed.categories)
    for row in split_rows:
        title, categories = split_item_text(row["target"])
        add(str(row["parent_asin"]), title, categories)

    return ItemTable.from_found(found, "data files (history lines + split targets)", conflicts)


def _as_text_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    return [str(value)]


def items_from_meta(meta_path: str | os.PathLike, keep_ids: set[str] | None = None) -> ItemTable:
    """Item texts from an Amazon Reviews 2023 meta file (`parent_asin`, `title`, `categories`, ...).

    The encoded text is "title, cat1|cat2" followed by features and description; `keep_ids`
    restricts the table to the items the data uses (a full meta file holds far more).
    """
    found: dict[str, tuple[str, str, list[str]]] = {}
    conflicts = 0
    for lineno, record in iter_jsonl(meta_path):
        if "parent_asin" not in record:
            raise SirenError(f"{meta_path}:{lineno}: missing field parent_asin")
        item_id = str(record["parent_asin"])
        if keep_ids is not None and item_id not in keep_ids:
            continue
        title = " ".join(_as_text_list(record.get("title")))
        categories = _as_text_list(record.get("categories"))
        details = " ".join(_as_text_list(record.get("features")) + _as_text_list(record.get("description")))
        text = f"{title}, {'|'.join(categories)}" if categories else title
        if details:
            text = f"{text}. {details}" if text else details
        if not text.strip():
            continue
        if item_id in found:
            conflicts += found[item_id][0] != text
            continue
        found[item_id] = (text, title, categories)
    if not found:
        raise SirenError(f"{meta_path}: no usable item (none with a title or text{' among the data items' if keep_ids else ''})")
    return ItemTable.from_found(found, f"meta file {meta_path}", conflicts)


def distinct_texts(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(distinct texts in first-seen order, index of each input text among them).

    Several items can share a text (editions of one film); each distinct text is encoded once.
    """
    position: dict[str, int] = {}
    index = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        index[i] = position.setdefault(text, len(position))
    return list(position), index
