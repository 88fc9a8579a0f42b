"""Stage 5's rows: which training rows it trains on, how a 4c row becomes tokens, and the collator.

Teacher rows are looked up by the dataset row index that travels with each example through the
collator (`ROW_INDEX`), never by position in the batch, so shuffling and multi-process sharding
cannot pair a row with another row's teacher.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from siren import SirenError
from siren.alignment_losses import IGNORE_INDEX

if TYPE_CHECKING:
    import torch

    from siren.teacher_hidden import TeacherStates

ROW_INDEX = "row_index"      # dataset row (4c `index`, = parquet extra_info.index) carried through the collator
RATING_LABEL = "rating_label"  # the float label, for the eval rating metrics


def select_training_rows(mask: torch.Tensor, teacher: TeacherStates, training_ratio: float, seed: int) -> list[int]:
    """The masked-in rows (teacher correct), then a `training_ratio` random subset of them, sorted.

    A masked-in row without a teacher state is an error: it would silently shrink the training set.
    """
    if not 0.0 < training_ratio <= 1.0:
        raise SirenError(f"--training_ratio must be in (0, 1], got {training_ratio}")
    masked_in = [int(i) for i in mask.nonzero().flatten().tolist()]
    if not masked_in:
        raise SirenError("the mask selects no rows: the teacher got no training row right")
    missing = [i for i in masked_in if not teacher.has(i)]
    if missing:
        raise SirenError(
            f"{len(missing)} of the {len(masked_in)} masked-in rows have no teacher hidden state "
            f"(first: row {missing[0]}); {teacher.path} covers {teacher.n_rows} rows"
        )
    n_keep = max(1, round(training_ratio * len(masked_in)))
    return sorted(random.Random(seed).sample(masked_in, n_keep))


def tokenize_ao_example(prompt: str, completion: str, tokenizer, max_length: int | None) -> dict | None:
    """input_ids = prompt ids + completion ids + EOS; labels mask the prompt. None if too long.

    The prompt is tokenized on its own, exactly as inference tokenizes it, so the last prompt token
    (the aligned position) is the token inference reads the rating after.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + completion_ids
    if max_length is not None and len(input_ids) > max_length:
        return None
    return {"input_ids": input_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids}


def tokenize_ao_split(dataset, tokenizer, max_length: int | None, desc: str = "tokenizing",
                      rating_ids: dict[int, int] | None = None):
    """A 4c split -> `datasets.Dataset` with input_ids, labels, row_index, rating_label.

    Returns (dataset, n_dropped); rows longer than max_length are dropped (truncating would cut the
    aligned position or the rating) and counted. With `rating_ids` (rating -> token id), a row whose
    completion does not start with its label's rating token is an error: the cross-entropy and the
    rating accuracy both read that token at the aligned position.
    """
    from datasets import Dataset
    from tqdm.auto import tqdm

    columns = {"input_ids": [], "labels": [], ROW_INDEX: [], RATING_LABEL: []}
    dropped = 0
    for row in tqdm(dataset, desc=desc, total=len(dataset)):
        example = tokenize_ao_example(row["prompt"], row["completion"], tokenizer, max_length)
        if example is None:
            dropped += 1
            continue
        if rating_ids is not None:
            first = example["labels"][example["labels"].count(IGNORE_INDEX)]  # labels: prompt masked, then completion
            if first != rating_ids.get(int(row["label"])):
                raise SirenError(f"row {row['index']}: completion {row['completion']!r} does not start with the "
                                 f"rating token of label {row['label']} (rebuild the 4c dataset with preprocess_hidden.py)")
        columns["input_ids"].append(example["input_ids"])
        columns["labels"].append(example["labels"])
        columns[ROW_INDEX].append(int(row["index"]))
        columns[RATING_LABEL].append(float(row["label"]))
    return Dataset.from_dict(columns), dropped


@dataclass
class RowIndexCollator:
    """Right padding (input_ids with the pad token, labels with -100, attention_mask 0 there), plus
    each row's dataset index and rating label."""

    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        import torch
        from torch.nn.utils.rnn import pad_sequence

        def padded(key: str, value: int) -> torch.Tensor:
            rows = [torch.tensor(e[key], dtype=torch.long) for e in examples]
            return pad_sequence(rows, batch_first=True, padding_value=value)

        batch = {"input_ids": padded("input_ids", self.pad_token_id), "labels": padded("labels", IGNORE_INDEX),
                 "attention_mask": pad_sequence([torch.ones(len(e["input_ids"]), dtype=torch.long) for e in examples],
                                                batch_first=True, padding_value=0)}
        batch[ROW_INDEX] = torch.tensor([int(e[ROW_INDEX]) for e in examples], dtype=torch.long)
        batch[RATING_LABEL] = torch.tensor([float(e[RATING_LABEL]) for e in examples], dtype=torch.float32)
        return batch
