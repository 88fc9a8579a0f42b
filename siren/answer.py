"""Parsing a model response: the think/answer structure and the rating inside `<answer>`.

The reward, CoT inference and answer-only inference all use these functions; nobody else holds
the regex.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
RATING_MIN, RATING_MAX = 1.0, 5.0

_ANSWER_BLOCK = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.DOTALL)
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)")


@dataclass(frozen=True)
class ParsedResponse:
    format_ok: bool          # exactly one of each tag, in think -> answer order
    answer_text: str | None  # inside the last <answer>...</answer>, None if there is none
    rating: float | None     # the number in answer_text (unclipped), None if not a number
    reasoning: str | None    # the response up to and including the first </think>, None if absent

    @property
    def valid(self) -> bool:
        return self.rating is not None


def check_format(text: str) -> bool:
    """True iff the response has exactly one <think>, </think>, <answer>, </answer>, in that order."""
    tags = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
    if any(text.count(tag) != 1 for tag in tags):
        return False
    positions = [text.index(tag) for tag in tags]
    return positions == sorted(positions)


def parse_rating(text: str | None) -> float | None:
    """The number in `text`, tolerating surrounding whitespace and one trailing period; else None."""
    if text is None:
        return None
    stripped = text.strip()
    if stripped.endswith("."):
        stripped = stripped[:-1].rstrip()
    if not _NUMBER.fullmatch(stripped):
        return None
    value = float(stripped)
    return value if math.isfinite(value) else None


def extract_answer(text: str) -> str | None:
    """The content of the last <answer>...</answer> block."""
    blocks = _ANSWER_BLOCK.findall(text)
    return blocks[-1] if blocks else None


def extract_reasoning(text: str) -> str | None:
    """The response up to and including the first </think> (the reasoning the teacher reads)."""
    end = text.find(THINK_CLOSE)
    return None if end < 0 else text[: end + len(THINK_CLOSE)]


def parse_response(text: str) -> ParsedResponse:
    answer_text = extract_answer(text)
    return ParsedResponse(
        format_ok=check_format(text),
        answer_text=answer_text,
        rating=parse_rating(answer_text),
        reasoning=extract_reasoning(text),
    )


def clip_rating(value: float) -> float:
    return min(RATING_MAX, max(RATING_MIN, value))
