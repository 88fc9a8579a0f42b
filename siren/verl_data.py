"""The verl parquet schema (SPEC §2): building rows and reading a parquet directory back.

Stage 2 writes it; stages 4a/4b/4c read it. `extra_info.index` is the row's position in its
parquet file, the key every later stage uses to line rows up.
"""

from __future__ import annotations

import os
from pathlib import Path

from siren import SirenError
from siren.prompts import build_messages

# Source split file stem -> parquet file stem (verl's examples call the validation split "val").
PARQUET_SPLITS = {"train": "train", "valid": "val", "test": "test"}
ABILITY = "rating_prediction"


def data_source(category: str) -> str:
    return f"AmazonReviews/{category}"


def verl_dir_name(max_history: int, use_long_history: bool) -> str:
    """`max@{N}-long@{True|False}`: the output folder name says what made the files."""
    return f"max@{max_history}-long@{bool(use_long_history)}"


def make_row(record: dict, *, category: str, split: str, index: int, sketch: str = "", max_history: int = 10) -> dict:
    """One verl row from one split record (see data/README.md)."""
    return {
        "data_source": data_source(category),
        "prompt": build_messages(category, record["history"], record["target"], sketch, max_history),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": f"{float(record['label']):.1f}"},
        "extra_info": {
            "split": split,
            "index": index,
            "user_id": record["user_id"],
            "parent_asin": record["parent_asin"],
        },
    }


def parquet_path(parquet_dir: str | os.PathLike, split: str) -> Path:
    """Path of a split's parquet; accepts train|val|valid|test."""
    stem = PARQUET_SPLITS.get(split, split)
    if stem not in PARQUET_SPLITS.values():
        raise SirenError(f"unknown split {split!r}; expected train, val or test")
    return Path(parquet_dir) / f"{stem}.parquet"


def load_split_rows(parquet_dir: str | os.PathLike, split: str, limit: int | None = None) -> list[dict]:
    """Read a verl parquet split as a list of row dicts, checking the schema and row order."""
    import pandas as pd

    path = parquet_path(parquet_dir, split)
    if not path.is_file():
        raise SirenError(f"missing parquet split: {path} (run preprocess_grpo.py first)")
    frame = pd.read_parquet(path)
    missing = [c for c in ("data_source", "prompt", "reward_model", "extra_info") if c not in frame.columns]
    if missing:
        raise SirenError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(frame) == 0:
        raise SirenError(f"{path}: the split is empty")
    if limit is not None:
        frame = frame.iloc[:limit]
    rows = []
    for position, row in enumerate(frame.to_dict("records")):
        info = row["extra_info"]
        if int(info["index"]) != position:
            raise SirenError(f"{path}: row {position} has extra_info.index {info['index']}; rows must be in index order")
        row["prompt"] = [dict(m) for m in row["prompt"]]
        row["label"] = float(row["reward_model"]["ground_truth"])
        rows.append(row)
    return rows
