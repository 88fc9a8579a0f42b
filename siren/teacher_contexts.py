"""Stage 4b's rows: which rows have a teacher (`select_teacher_rows`), their teacher contexts, and
which of those have an aligned position (`align_teacher_rows`).

Teacher context (4b): chat-templated prompt + the model's reasoning through `</think>` +
"\n\n<answer>". Student context (4c, 5, 6): chat-templated prompt + empty think block +
`<answer>`. Both end in the tokens of `<answer>`; the last one is the aligned position. A teacher
context whose `<answer>` tokenizes otherwise (its reasoning's last characters merged with the tag)
has no aligned position: the row is left out and counted as `unaligned`, not the run refused.
With left padding the aligned position is the last column of a batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from siren import SirenError
from siren.answer import ANSWER_OPEN
from siren.answer_only_data import student_text
from siren.prompts import answer_tag_ids, chat_prompt_text, teacher_context


def teacher_text(tokenizer, row: dict, reasoning: str) -> str:
    return teacher_context(chat_prompt_text(tokenizer, row["prompt"]), reasoning)


def check_student_tail(tokenizer, row: dict, answer_ids: Sequence[int]) -> None:
    """The answer-only context must end in the tokens of `<answer>`; its tail is the same text for
    every row (the chat template's generation prompt, the empty think block, `<answer>`), so one
    row decides it for the tokenizer."""
    student_ids = tokenizer(student_text(tokenizer, row), add_special_tokens=False)["input_ids"]
    if list(student_ids[-len(answer_ids):]) != list(answer_ids):
        raise SirenError(
            f"the answer-only context of {getattr(tokenizer, 'name_or_path', 'this tokenizer')} does not end in the "
            f"tokens of {ANSWER_OPEN!r} ({list(answer_ids)}); it ends in {list(student_ids[-len(answer_ids):])}, "
            "so no position can be aligned"
        )


@dataclass(frozen=True)
class ContextAlignment:
    """Which teacher contexts end in the tokens of `<answer>` (aligned) and which do not."""

    positions: list[int]      # aligned rows, in the order given
    lengths: list[int]        # their teacher context lengths in tokens
    unaligned: list[int]      # rows whose teacher context does not end in `<answer>`'s tokens


def align_contexts(tokenizer, rows: Sequence[dict], thinking: Sequence[dict], positions: Sequence[int],
                   chunk_size: int = 256) -> ContextAlignment:
    """Tokenize every teacher context once, in chunks of `chunk_size` rows (only a chunk's ids exist
    at a time), and sort the rows into aligned and unaligned. A reasoning whose text merges with the
    tag that follows it (e.g. one ending in "<") is unaligned: its `<answer>` is other tokens."""
    answer_ids = answer_tag_ids(tokenizer)
    if positions:
        check_student_tail(tokenizer, rows[positions[0]], answer_ids)
    k = len(answer_ids)
    aligned, lengths, unaligned = [], [], []
    for start in range(0, len(positions), chunk_size):
        chunk = positions[start:start + chunk_size]
        teacher_ids = tokenizer([teacher_text(tokenizer, rows[p], thinking[p]["reasoning"]) for p in chunk],
                                add_special_tokens=False)["input_ids"]
        for p, ids in zip(chunk, teacher_ids, strict=True):
            if list(ids[-k:]) == answer_ids:
                aligned.append(p)
                lengths.append(len(ids))
            else:
                unaligned.append(p)
    return ContextAlignment(aligned, lengths, unaligned)




@dataclass(frozen=True)
class TeacherSelection:
    """The rows of the split stage 4b extracts: those with reasoning (and, with a mask, correct)."""

    positions: list[int]      # row positions (= extra_info.index) in dataset order
    n_rows: int
    no_reasoning: int
    masked_out: int | None    # None without --only_correct
    unaligned: int = 0        # rows left out because their teacher context has no aligned position

    def counts(self) -> dict:
        return {"rows": self.n_rows, "extracted": len(self.positions), "no_reasoning": self.no_reasoning,
                "masked_out": self.masked_out or 0, "unaligned": self.unaligned}

    def summary(self) -> str:
        masked = "" if self.masked_out is None else f", {self.masked_out} masked out"
        return f"{self.no_reasoning} without reasoning{masked}, {self.unaligned} unaligned"


def select_teacher_rows(thinking: Sequence[dict], mask: Sequence[bool] | None = None) -> TeacherSelection:
    """Rows whose 4a response has reasoning (a `</think>`), and that `mask` marks correct if given."""
    no_reasoning = sum(t["reasoning"] is None for t in thinking)
    masked_out = None if mask is None else len(thinking) - sum(bool(m) for m in mask)
    positions = [i for i, t in enumerate(thinking) if t["reasoning"] is not None and (mask is None or mask[i])]
    if not positions:
        raise SirenError(f"no rows to extract: {no_reasoning} of {len(thinking)} have no reasoning"
                         + (f", {masked_out} are masked out" if masked_out is not None else ""))
    return TeacherSelection(positions, len(thinking), no_reasoning, masked_out)


def align_teacher_rows(tokenizer, rows: Sequence[dict], thinking: Sequence[dict],
                       selection: TeacherSelection) -> tuple[TeacherSelection, list[int]]:
    """`selection` without its unaligned rows (counted), and the teacher context lengths of the rest."""
    alignment = align_contexts(tokenizer, rows, thinking, selection.positions)
    if not alignment.positions:
        raise SirenError(f"no rows to extract: none of the {len(selection.positions)} selected teacher contexts ends in "
                         f"the tokens of {ANSWER_OPEN!r}")
    kept = TeacherSelection(alignment.positions, selection.n_rows, selection.no_reasoning, selection.masked_out,
                            len(alignment.unaligned))
    return kept, alignment.lengths

