"""Stage 4c's answer-only (AO) data: the one place the AO prompt is assembled, the completion, the
DatasetDict stage 4c writes and stages 5 and 6 read (or rows built the same way straight from a
verl parquet dir).

AO prompt = chat-templated parquet prompt + empty think block + `<answer>`; the rating token comes
next. The teacher context of stage 4b ends in the same tokens (`siren.prompts.answer_tag_ids`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from siren import SirenError
from siren.answer import ANSWER_OPEN
from siren.data import SPLITS, canonical_split
from siren.io import read_json
from siren.prompts import answer_only_context, chat_prompt_text
from siren.verl_data import PARQUET_SPLITS, load_split_rows, parquet_path, parse_verl_dir_name

# Columns of every split of the 4c DatasetDict (data/README.md).
AO_COLUMNS = ("prompt", "completion", "label", "index", "user_id", "parent_asin")
# The entries `DatasetDict.save_to_disk` writes into stage 4c's folder (beside its manifest.json):
# `--overwrite` replaces these and nothing else.
DATASET_DICT_ENTRIES = ("dataset_dict.json", *SPLITS)


def student_text(tokenizer, row: dict) -> str:
    """The answer-only context of a verl parquet row: chat prompt + empty think + `<answer>`."""
    return answer_only_context(chat_prompt_text(tokenizer, row["prompt"]))


def completion_text(label: float) -> str:
    """The AO completion, what the GRPO teacher writes after `<answer>`: "4.0</answer>" for a 4.

    The teacher's prompt asks for the rating with one decimal and the reward's ground truth is the
    label with one decimal, so the teacher writes "4.0". Qwen's tokenizer splits digits, so the first
    completion token is the rating digit alone ("4", ".", "0", "</", "answer", ">"): the token the
    aligned position (the end of `<answer>`) predicts and answer-only decoding reads.
    """
    if not float(label).is_integer():
        raise SirenError(f"label {label} is not a whole star; the answer-only target must start with one rating token")
    return f"{float(label):.1f}</answer>"


def answer_only_record(tokenizer, row: dict) -> dict:
    """One 4c row (AO_COLUMNS) from one verl parquet row."""
    info = row["extra_info"]
    return {
        "prompt": student_text(tokenizer, row),
        "completion": completion_text(row["label"]),
        "label": float(row["label"]),
        "index": int(info["index"]),
        "user_id": str(info["user_id"]),
        "parent_asin": str(info["parent_asin"]),
    }


def answer_only_records(tokenizer, rows: Sequence[dict]) -> dict[str, list]:
    """Columns of one split of the 4c DatasetDict, rows in parquet order."""
    records = [answer_only_record(tokenizer, row) for row in rows]
    return {column: [record[column] for record in records] for column in AO_COLUMNS}


def read_parquet_splits(parquet_dir: str | os.PathLike, limit: int | None = None) -> dict[str, list[dict]]:
    """The rows of every split of a verl parquet folder ({train, valid, test} -> rows), first `limit` each."""
    return {split: load_split_rows(parquet_dir, stem, limit) for split, stem in PARQUET_SPLITS.items()}


def build_ao_dataset(tokenizer, rows_by_split: dict[str, Sequence[dict]]):
    """Stage 4c's DatasetDict from parquet rows, and per split its row count and prompt tokens
    (mean, max): returns (dataset_dict, counts, prompt_tokens)."""
    from datasets import Dataset, DatasetDict

    from siren.tokenization import count_tokens

    columns = {split: answer_only_records(tokenizer, rows) for split, rows in rows_by_split.items()}
    dataset_dict = DatasetDict({split: Dataset.from_dict(cols) for split, cols in columns.items()})
    counts = {split: len(cols["prompt"]) for split, cols in columns.items()}
    prompt_tokens = {}
    for split, cols in columns.items():
        lengths = count_tokens(tokenizer, cols["prompt"])
        prompt_tokens[split] = {"mean": round(sum(lengths) / len(lengths), 1), "max": max(lengths)}
    return dataset_dict, counts, prompt_tokens


def default_hidden_dir(parquet_dir: str | os.PathLike, category: str) -> Path:
    """data/{category}/hidden/max@{N}-long@{bool}, named after the parquet directory."""
    name = Path(parquet_dir).resolve().name
    if parse_verl_dir_name(name) is None:
        raise SirenError(f"cannot derive the output folder from {parquet_dir} (not named max@N-long@True|False); "
                         "pass --output_dir")
    return Path("data") / category / "hidden" / name


def is_ao_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / "dataset_dict.json").is_file()


def listed_splits(path: str | os.PathLike) -> list[str]:
    """The splits a saved DatasetDict's dataset_dict.json lists."""
    index = Path(path) / "dataset_dict.json"
    value = read_json(index)
    splits = value.get("splits") if isinstance(value, dict) else None
    if not isinstance(splits, list) or not all(isinstance(name, str) for name in splits):
        raise SirenError(f"{index}: no list of splits (not written by save_to_disk); rebuild it with preprocess_hidden.py")
    return splits


def check_data_path(data_path: str | os.PathLike, split: str) -> str:
    """Which kind `data_path` is ("datasetdict" or "parquet"), and that it has `split`; file checks only."""
    data_path, split = Path(data_path), canonical_split(split)
    if not data_path.exists():
        raise SirenError(f"--data_path does not exist: {data_path}")
    if is_ao_dataset(data_path):
        splits = listed_splits(data_path)
        if split not in splits:
            raise SirenError(f"{data_path}: no {split!r} split (has {', '.join(splits)})")
        return "datasetdict"
    if any(data_path.glob("*.parquet")):
        path = parquet_path(data_path, split)
        if not path.is_file():
            raise SirenError(f"split {split!r} not found: no {path}")
        return "parquet"
    raise SirenError(
        f"{data_path} is neither a stage-4c DatasetDict (no dataset_dict.json) nor a verl parquet directory"
    )


def _load_saved_split(path: Path, split: str):
    """One split of a saved DatasetDict, read on its own (a damaged split the stage does not read
    does not stop it). A split without rows, an .arrow file cut short, a state.json that is not
    save_to_disk's: one-line errors that say to rebuild the folder."""
    from datasets import Dataset

    from siren.reading import one_line

    where, rebuild = f"{path}/{split}", "rebuild it with preprocess_hidden.py"
    state = read_json(path / split / "state.json")
    data_files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(data_files, list):
        raise SirenError(f"{where}/state.json lists no data files (not written by save_to_disk); {rebuild}")
    if not data_files:
        raise SirenError(f"{where}: the split has no rows; {rebuild}")
    try:
        dataset = Dataset.load_from_disk(str(path / split))
    except Exception as err:  # noqa: BLE001 - pyarrow and datasets raise many kinds for a damaged file
        raise SirenError(f"{where}: cannot read the saved split ({type(err).__name__}: {one_line(err)}); "
                         f"{rebuild}") from None
    if len(dataset) == 0:
        raise SirenError(f"{where}: the split has no rows; {rebuild}")
    return dataset


def load_ao_dataset(path: str | os.PathLike, splits: Sequence[str] = ("train", "valid")):
    """The 4c DatasetDict's `splits` (only those are read), each with rows and every column;
    train's `index` must be 0..n-1 in order (stage 5 matches rows to mask.pt by it) and prompts
    must end with `<answer>`."""
    from datasets import DatasetDict

    if not is_ao_dataset(path):
        raise SirenError(f"{path} is not a DatasetDict saved with save_to_disk (run preprocess_hidden.py)")
    path = Path(path)
    listed = listed_splits(path)
    for split in splits:
        if split not in listed:
            raise SirenError(f"{path}: no {split!r} split (has {', '.join(listed)})")
    dataset_dict = DatasetDict({split: _load_saved_split(path, split) for split in splits})
    for split in splits:
        missing = [c for c in AO_COLUMNS[:4] if c not in dataset_dict[split].column_names]
        if missing:
            raise SirenError(f"{path}/{split}: missing column(s) {', '.join(missing)}")
        if not dataset_dict[split][0]["prompt"].endswith(ANSWER_OPEN):
            raise SirenError(f"{path}/{split}: prompts must end with {ANSWER_OPEN} (the aligned position); row 0 does not")
    if "train" in splits:
        train = dataset_dict["train"]
        if list(train["index"]) != list(range(len(train))):
            raise SirenError(f"{path}/train: the index column is not 0..{len(train) - 1} in order, "
                             "so rows cannot be matched to the mask")
    return dataset_dict


def load_ao_rows(data_path: str | os.PathLike, split: str, tokenizer, limit: int | None = None) -> list[dict]:
    """Rows `{index, label, prompt, user_id, parent_asin}` from a 4c DatasetDict or a verl parquet dir.

    For the parquet the answer-only rows are built here by `answer_only_record`, exactly as stage 4c
    builds them, so both sources give the model identical inputs.
    """
    data_path, split = Path(data_path), canonical_split(split)
    fields = ("index", "label", "prompt", "user_id", "parent_asin")
    if check_data_path(data_path, split) == "datasetdict":
        dataset = load_ao_dataset(data_path, (split,))[split]
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        rows = [{"index": int(r["index"]), "label": float(r["label"]), "prompt": r["prompt"],
                 "user_id": r.get("user_id"), "parent_asin": r.get("parent_asin")} for r in dataset]
    else:
        records = (answer_only_record(tokenizer, r) for r in load_split_rows(data_path, split, limit=limit))
        rows = [{field: record[field] for field in fields} for record in records]
    if not rows:
        raise SirenError(f"{data_path}: split {split!r} is empty")
    bad = [r["index"] for r in rows if not r["prompt"].endswith(ANSWER_OPEN)]
    if bad:
        raise SirenError(f"{data_path}: prompt of row {bad[0]} does not end with {ANSWER_OPEN}, so it is not an AO prompt")
    return rows
