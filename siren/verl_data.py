r"""The stage-2 files: the verl parquet schema (data/README.md), its folder name, and reading them.

Stage 2 (preprocess_grpo.py) writes them with siren.verl_build; stages 3-4c read them with
`load_split_rows`. `extra_info.index` is the row's position in its parquet file, the key every
later stage uses to line rows up. The folder name `max@{N}-long@{True|False}` is written and parsed
here only; main_grpo_amazon.sh asks for its default folder with

    python -m siren.verl_data Movies 10 true      # prints data/Movies/verl/max@10-long@True
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from siren import SirenError
from siren.prompts import build_messages

# Split name (siren.data.SPLITS) -> parquet file stem: verl's examples call the validation split "val".
# This is the only place that mapping is written.
PARQUET_SPLITS = {"train": "train", "valid": "val", "test": "test"}
ABILITY = "rating_prediction"


def data_source(category: str) -> str:
    return f"AmazonReviews/{category}"


VERL_DIR_PATTERN = re.compile(r"max@(\d+)-long@(True|False)")


def verl_dir_name(max_history: int, use_long_history: bool) -> str:
    """`max@{N}-long@{True|False}`: the output folder name says what made the files."""
    return f"max@{max_history}-long@{bool(use_long_history)}"


def parse_verl_dir_name(name: str) -> tuple[int, bool] | None:
    """(max_history, use_long_history) of a `max@{N}-long@{True|False}` folder name, else None."""
    match = VERL_DIR_PATTERN.fullmatch(name)
    return (int(match.group(1)), match.group(2) == "True") if match else None


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
    """Path of a split's parquet; `split` is train, valid (or val) or test."""
    from siren.data import canonical_split

    return Path(parquet_dir) / f"{PARQUET_SPLITS[canonical_split(split)]}.parquet"


def read_parquet_frame(path: Path):
    """pandas.read_parquet, with a file that is not (valid) parquet as a one-line SirenError."""
    import pandas as pd
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as err:
        # pyarrow repeats the path ("Could not open Parquet input source '<path>': ..."); keep the reason.
        reason = " ".join(str(err).split()).split(f"{path}': ", 1)[-1]
        raise SirenError(f"{path}: not a readable parquet file ({reason})") from None


def _shown(value) -> str:
    text = repr(value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value)
    return text if len(text) <= 40 else text[:37] + "..."


def _ground_truth_rating(value) -> float | None:
    """reward_model.ground_truth as a rating: a number, or a string of one ("4.0"), from 1 to 5."""
    import numbers

    from siren.answer import RATING_MAX, RATING_MIN

    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, numbers.Real):
        return None
    rating = float(value)
    return rating if RATING_MIN <= rating <= RATING_MAX else None  # also None for NaN


def _whole_number(value) -> int | None:
    import numbers

    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real) and float(value).is_integer():
        return int(value)
    return None


def check_parquet_row(row: dict, path: Path, position: int) -> dict:
    """One verl parquet row (data/README.md) as the stages read it, in place: `prompt` a list of
    {role, content} messages, `label` the float of reward_model.ground_truth. A field of the wrong
    type or a ground truth that is not a rating from 1 to 5 is a one-line error naming the row."""
    where = f"{path}: row {position}"
    info, reward = row["extra_info"], row["reward_model"]
    if not isinstance(info, dict) or any(info.get(key) is None for key in ("index", "user_id", "parent_asin")):
        raise SirenError(f"{where}: extra_info must hold index, user_id and parent_asin, got {_shown(info)}")
    index = _whole_number(info["index"])
    if index is None:
        raise SirenError(f"{where}: extra_info.index must be a whole number, got {_shown(info['index'])}")
    if index != position:
        raise SirenError(f"{where} has extra_info.index {index}; rows must be in index order")
    truth = reward.get("ground_truth") if isinstance(reward, dict) else None
    label = _ground_truth_rating(truth)
    if label is None:
        raise SirenError(f"{where}: reward_model.ground_truth must be a rating from 1 to 5 (e.g. \"4.0\"), "
                         f"got {_shown(truth) if isinstance(reward, dict) else _shown(reward)}")
    messages = row["prompt"]
    if isinstance(messages, (str, bytes, dict)) or not hasattr(messages, "__iter__"):
        raise SirenError(f"{where}: prompt must be a list of chat messages, got {_shown(messages)}")
    messages = list(messages)
    if not messages or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                               and isinstance(m.get("content"), str) for m in messages):
        raise SirenError(f"{where}: prompt must be a non-empty list of {{role, content}} string messages, "
                         f"got {_shown(messages)}")
    row["prompt"] = [dict(m) for m in messages]
    row["label"] = label
    return row


def load_split_rows(parquet_dir: str | os.PathLike, split: str, limit: int | None = None) -> list[dict]:
    """Read a verl parquet split as a list of row dicts, checking the schema, each row's fields
    (`check_parquet_row`) and the row order."""
    path = parquet_path(parquet_dir, split)
    if not path.is_file():
        raise SirenError(f"missing parquet split: {path} (run preprocess_grpo.py first)")
    frame = read_parquet_frame(path)
    missing = [c for c in ("data_source", "prompt", "reward_model", "extra_info") if c not in frame.columns]
    if missing:
        raise SirenError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(frame) == 0:
        raise SirenError(f"{path}: the split is empty")
    if limit is not None:
        frame = frame.iloc[:limit]
    return [check_parquet_row(row, path, position) for position, row in enumerate(frame.to_dict("records"))]


def category_of(rows: Sequence[dict], override: str | None = None) -> str:
    """The category of parquet rows: `override` if given, else from `data_source` ("AmazonReviews/<Category>")."""
    if override:
        return override
    sources = {str(row["data_source"]) for row in rows}
    if len(sources) != 1:
        raise SirenError(f"rows come from {len(sources)} data sources ({', '.join(sorted(sources)[:3])}); pass --category")
    prefix, sep, category = sources.pop().partition("/")
    if not sep or not category or prefix + sep != data_source(""):
        raise SirenError(f"cannot read a category from data_source {prefix + sep + category!r}; pass --category")
    from siren.data import check_category_name

    try:
        return check_category_name(category)  # it names output folders: "AmazonReviews/../x" may not
    except SirenError as err:
        raise SirenError(f"data_source {prefix + sep + category!r}: {err}; pass --category") from None


def default_verl_dir(category: str, max_history: int, use_long_history: bool) -> Path:
    """`data/{category}/verl/max@{N}-long@{bool}` (relative to the working directory)."""
    from siren.data import check_category_name

    check_category_name(category)
    return Path("data") / category / "verl" / verl_dir_name(max_history, use_long_history)


# --------------------------------------------------------------------------------------------
# main_grpo_amazon.sh's default DATA_DIR, so the folder name is built in one place.
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """`python -m siren.verl_data CATEGORY MAX_HISTORY USE_LONG_HISTORY`: print the default stage-2 folder."""
    import argparse

    from siren.cli import str2bool

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        raise SirenError("usage: python -m siren.verl_data CATEGORY MAX_HISTORY USE_LONG_HISTORY")
    category, max_history, use_long_history = argv
    if not re.fullmatch(r"[0-9]+", max_history) or int(max_history) < 1:
        raise SirenError(f"MAX_HISTORY must be a whole number >= 1, got {max_history!r}")
    try:
        long_history = str2bool(use_long_history)
    except argparse.ArgumentTypeError as err:
        raise SirenError(f"USE_LONG_HISTORY: {err}") from None
    print(default_verl_dir(category, int(max_history), long_history))


if __name__ == "__main__":
    from siren.cli import run_main

    sys.exit(run_main(main))
