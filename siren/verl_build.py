"""Stage 2 (preprocess_grpo.py): the sketches, the verl rows of each split (`build_parquets`), and
the prompt-token report of the paper's token-efficiency table (`count_prompt_tokens`). The parquet
schema and reading the files back are siren.verl_data's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from siren import SirenError
from siren.prompts import build_messages
from siren.verl_data import PARQUET_SPLITS, make_row

# Prompt variants compared in prompt_stats.json (the paper's token-efficiency table), with their
# table labels, in table order: raw history first, since the reductions are measured against it.
RAW_VARIANT = "raw_history"
PROMPT_VARIANTS = {
    "raw_history": "Raw history (every interaction)",       # every history line, no sketch
    "recent_only": "Recent N only",                         # the N most recent lines, no sketch
    "sketch_recent": "Sketch + recent N (SIREN)",           # the sketch + the N most recent lines
    "as_built": "As built (this run's parquet)",            # the prompt stored in the parquet
}





SKETCH_FIELDS = ("user_id", "user_profile_prompt")


def check_sketch_record(record: dict, path: Path, lineno: int) -> dict:
    """One user_feature.jsonl row: `user_id` a non-empty string, `user_profile_prompt` a string."""
    from siren.data import check_id, check_string

    missing = [f for f in SKETCH_FIELDS if f not in record]
    if missing:
        raise SirenError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
    check_id(record["user_id"], path, lineno, "user_id")
    check_string(record["user_profile_prompt"], path, lineno, "user_profile_prompt")
    return record


def load_sketches(path: str | os.PathLike) -> dict[str, str]:
    """{user_id: sketch text} from stage 1's user_feature.jsonl (`user_id`, `user_profile_prompt`).

    A user on two rows is refused, as in history.jsonl.gz: which of the two sketches a prompt got
    would depend on the row order.
    """
    from siren.data import load_per_user_rows

    rows = load_per_user_rows(path, "sketch file", check_sketch_record)
    return {record["user_id"]: record["user_profile_prompt"].strip() for record in rows}


def build_split_rows(
    records: list[dict],
    *,
    category: str,
    split: str,
    sketches: dict[str, str],
    max_history: int,
    use_long_history: bool,
) -> list[dict]:
    """The parquet rows of one split, in source order; the sketch is used only with use_long_history."""
    return [
        make_row(
            record,
            category=category,
            split=split,
            index=index,
            sketch=sketches.get(record["user_id"], "") if use_long_history else "",
            max_history=max_history,
        )
        for index, record in enumerate(records)
    ]


def variant_messages(rows: list[dict], records: list[dict], *, category: str, sketches: dict[str, str],
                     max_history: int) -> dict[str, list[list[dict]]]:
    """The chat prompt of every row under each of PROMPT_VARIANTS (as_built is the stored prompt)."""
    variants: dict[str, list[list[dict]]] = {"as_built": [row["prompt"] for row in rows]}
    settings = {"recent_only": (False, max_history), "sketch_recent": (True, max_history), "raw_history": (False, None)}
    for name, (with_sketch, history_limit) in settings.items():
        variants[name] = [
            build_messages(
                category, record["history"], record["target"],
                sketches.get(record["user_id"], "") if with_sketch else "", history_limit,
            )
            for record in records
        ]
    return variants


# The token report's files, beside the parquet files (stage 2 writes them with a tokenizer only).
STATS_NAME = "prompt_stats.json"
TEST_COUNTS_NAME = "prompt_tokens_test.npz"


@dataclass
class TokenReport:
    """Prompt tokens per split and variant (prompt_stats.json) and per test row (prompt_tokens_test.npz)."""

    tokenizer: str
    max_prompt_tokens: int
    splits: dict[str, dict[str, dict]]   # parquet stem -> variant -> token_summary
    test_counts: dict                    # variant -> per-row counts of the test split (numpy arrays)
    rows_over_limit: dict[str, int]      # parquet stem -> rows whose stored prompt is over max_prompt_tokens
    counting: str                        # "chunked" or "whole_text" (see PromptTokenCounter)


@dataclass
class ParquetBuild:
    """What stage 2 built from a category's split files, ready to be written (`write`)."""

    source: Path                         # the category folder read
    category: str
    max_history: int
    use_long_history: bool
    records: dict[str, list[dict]]       # split -> the source rows used, in file order
    rows: dict[str, list[dict]]          # parquet stem -> verl rows
    sketch_users: int
    sketch_users_in_data: int
    data_users: int
    rows_without_sketch: dict[str, int]  # parquet stem -> rows whose user has no (or an empty) sketch
    duplicates: dict                     # split -> siren.data.Duplicates of the whole split file
    token_report: TokenReport | None = None
    warnings: list[str] = field(default_factory=list)

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write the parquet files (and the token report) into `folder`; returns their paths."""
        import numpy as np
        import pandas as pd

        from siren.io import atomic_write_json

        folder = Path(folder)
        written = []
        for stem, rows in self.rows.items():
            path = folder / f"{stem}.parquet"
            pd.DataFrame(rows).to_parquet(path, index=False)
            written.append(path)
        report = self.token_report
        if report is not None:
            written.append(atomic_write_json(folder / STATS_NAME, {
                "tokenizer": report.tokenizer,
                "max_history": self.max_history,
                "use_long_history": bool(self.use_long_history),
                "splits": report.splits,
                "counts": {"rows_without_sketch": self.rows_without_sketch,
                           "rows_over_max_prompt_tokens": report.rows_over_limit},
            }))
            with open(folder / TEST_COUNTS_NAME, "wb") as handle:  # np.savez on a bare path would append ".npz"
                np.savez(handle, **report.test_counts)
            written.append(folder / TEST_COUNTS_NAME)
        return written

    def counts(self) -> dict:
        """The manifest's counts."""
        report = self.token_report
        return {
            "rows": {stem: len(rows) for stem, rows in self.rows.items()},
            "rows_without_sketch": self.rows_without_sketch,
            "rows_over_max_prompt_tokens": None if report is None else report.rows_over_limit,
            "duplicate_rows": {split: found.count for split, found in self.duplicates.items()},
            "data_users": self.data_users,
            "sketch_users": self.sketch_users,
            "sketch_users_in_data": self.sketch_users_in_data,
            "token_counting": None if report is None else report.counting,
        }

    def summary(self) -> list[str]:
        """What was read and built, for the console."""
        lines = [
            f"read {self.source}: " + ", ".join(f"{split} {len(rows)} rows" for split, rows in self.records.items()),
            "built " + ", ".join(f"{stem} {len(rows)}" for stem, rows in self.rows.items())
            + f" rows, sketch in prompt: {bool(self.use_long_history and self.sketch_users)}",
            "rows without a sketch: " + ", ".join(f"{k} {v}" for k, v in self.rows_without_sketch.items()),
        ]
        report = self.token_report
        if report is not None:
            lines.append(f"rows over {report.max_prompt_tokens} prompt tokens: "
                         + ", ".join(f"{k} {v}" for k, v in report.rows_over_limit.items()))
            test = report.splits["test"]
            lines.append("test prompt tokens (mean): " + ", ".join(f"{v} {test[v]['mean']}" for v in PROMPT_VARIANTS))
        return lines


def latest_rows_per_user(rows: list[dict], k: int) -> list[dict]:
    """Each user's `k` most recent rows (largest timestamp; on a tie the later line), in file order.

    A split's rows are a user's earlier ratings; the valid and test rows are the last ones, and
    later ratings lean more positive than early ones (on Movies 60% of the users' last train
    ratings are 5s against 40% of all train ratings and 62% of test ratings). Training on the most
    recent rows keeps the rows a model learns from close to the rows it is scored on.
    """
    by_user: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_user.setdefault(row["user_id"], []).append(index)
    keep = set()
    for indices in by_user.values():
        keep.update(sorted(indices, key=lambda i: (rows[i]["timestamp"], i))[-k:])
    return [row for index, row in enumerate(rows) if index in keep]


def build_parquets(
    category_dir: str | os.PathLike,
    *,
    category: str,
    max_history: int,
    use_long_history: bool,
    sketch_path: str | os.PathLike | None = None,
    limit: int | None = None,
    train_rows_per_user: int | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    max_prompt_tokens: int = 2048,
) -> ParquetBuild:
    """Read and check the three split files, build their verl rows, and count prompt tokens.

    Every input is read and every row built before anything is written, so a bad row in any split
    stops the stage with nothing on disk. The sketch goes into the prompt only with
    `use_long_history`; rows repeating an earlier (user_id, parent_asin) are kept, each as its own
    parquet row, and reported (`duplicates`, `warnings`). With `train_rows_per_user` the train split
    keeps only each user's K most recent rows (before `limit` applies).
    """
    from siren.data import load_split, split_path

    sketches = load_sketches(sketch_path) if sketch_path is not None else {}
    records, duplicates = {}, {}
    for split in PARQUET_SPLITS:
        split_rows = load_split(split_path(category_dir, split), warn=False)
        duplicates[split] = split_rows.duplicates
        if split == "train" and train_rows_per_user:
            split_rows = latest_rows_per_user(split_rows, train_rows_per_user)
        records[split] = split_rows[:limit] if limit else list(split_rows)

    data_users = {r["user_id"] for rows in records.values() for r in rows}
    users_with_sketch = {u for u, text in sketches.items() if text}
    overlap = len(data_users & set(sketches))
    if use_long_history and sketch_path is not None and not data_users & users_with_sketch:
        # The folder would say long@True while no prompt carries a sketch: a sketch file of other
        # data (or of another category) is a mistake to stop at, not a warning.
        found = (f"covers none of the {len(data_users)} users in the data ({len(sketches)} users in the file, "
                 f"e.g. {next(iter(sketches))!r})" if not overlap else
                 f"holds only empty sketches for the {overlap} of the {len(data_users)} data users it covers")
        raise SirenError(f"--sketch_path {sketch_path} {found}: no prompt would carry a sketch; build the sketch "
                         "from this data (generate_interest_sketch.py), or pass --use_long_history false")
    warnings = []
    if sketches and overlap < len(data_users):
        warnings.append(f"the sketch file covers {overlap} of the {len(data_users)} users in the data "
                        f"({len(sketches)} users in the sketch file); the others get no sketch")
    for split, found in duplicates.items():
        if found.count:
            warnings.append(f"{found.describe(split_path(category_dir, split))}; all rows are kept, each as its "
                            "own parquet row")

    rows, rows_without_sketch = {}, {}
    for split, stem in PARQUET_SPLITS.items():
        rows[stem] = build_split_rows(records[split], category=category, split=stem, sketches=sketches,
                                      max_history=max_history, use_long_history=use_long_history)
        rows_without_sketch[stem] = sum(r["user_id"] not in users_with_sketch for r in records[split])

    build = ParquetBuild(
        source=Path(category_dir), category=category, max_history=max_history, use_long_history=use_long_history, records=records, rows=rows,
        sketch_users=len(sketches), sketch_users_in_data=overlap, data_users=len(data_users),
        rows_without_sketch=rows_without_sketch, duplicates=duplicates, warnings=warnings,
    )
    if tokenizer_path is not None:
        build.token_report = count_prompt_tokens(build, sketches, tokenizer_path, max_prompt_tokens)
        if build.token_report.counting == "whole_text":
            warnings.append("chunked token counting disagreed with this tokenizer; counted whole prompts instead")
    return build


def count_prompt_tokens(build: ParquetBuild, sketches: dict[str, str], tokenizer_path: str | os.PathLike,
                        max_prompt_tokens: int) -> TokenReport:
    """Prompt tokens of every split under each of PROMPT_VARIANTS, counted with the given tokenizer."""
    from tqdm import tqdm

    from siren.prompt_tokens import PromptTokenCounter, load_counting_tokenizer, token_summary

    counter = PromptTokenCounter(load_counting_tokenizer(tokenizer_path))
    splits, test_counts, rows_over_limit = {}, {}, {}
    progress = tqdm(total=len(PARQUET_SPLITS) * len(PROMPT_VARIANTS), desc="prompt tokens", unit="variant")
    for split, stem in PARQUET_SPLITS.items():
        by_variant = variant_messages(build.rows[stem], build.records[split], category=build.category,
                                      sketches=sketches, max_history=build.max_history)
        counted = {}
        for variant in sorted(PROMPT_VARIANTS, key=lambda v: v != "as_built"):  # as_built first
            prompts = by_variant[variant]
            if variant != "as_built" and prompts == by_variant["as_built"]:
                counted[variant] = counted["as_built"]  # e.g. sketch_recent when the sketch is in the prompt
            else:
                counter.verify(prompts)
                counted[variant] = counter.count(prompts)
            progress.update()
        splits[stem] = {variant: token_summary(counts) for variant, counts in counted.items()}
        rows_over_limit[stem] = int((counted["as_built"] > max_prompt_tokens).sum())
        if stem == "test":
            test_counts = counted
    progress.close()
    return TokenReport(tokenizer=str(tokenizer_path), max_prompt_tokens=max_prompt_tokens, splits=splits,
                       test_counts=test_counts, rows_over_limit=rows_over_limit,
                       counting="whole_text" if counter.whole_text else "chunked")


