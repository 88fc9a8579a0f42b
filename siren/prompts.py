"""The one place that owns SIREN's prompt wording and the chat contexts built around it.

Everything that builds a prompt imports from here: the sketch text (stage 1), the verl parquet
(stage 2), the teacher context for hidden-state extraction (4b) and the answer-only student
context (4c, 5, 6). The tags themselves belong to `siren.answer`.
"""

from __future__ import annotations

from dataclasses import dataclass

from siren.answer import ANSWER_OPEN, THINK_CLOSE, THINK_OPEN
from siren.data import history_lines

# Item nouns for categories whose plural is not just "<noun>s". Anything else is derived from the
# category name ("Films" -> "film", "Video_Games" -> "video game"), so no category is special-cased
# in the scripts.
_NOUNS = {
    "movies": "movie",
    "movies_and_tv": "movie",
    "books": "book",
    "kindle_store": "book",
    "cds_and_vinyl": "album",
    "digital_music": "album",
    "video_games": "video game",
}
# The other Amazon Reviews 2023 categories (scripts/build_category.py builds any of them) whose name
# is a department, not an item: the rule below would say "toys and game" or "all beauty". Each noun
# takes a plain "s" plural, as the sketch wording writes "<noun>s".
_NOUNS.update({
    "all_beauty": "beauty product",
    "amazon_fashion": "fashion item",
    "arts_crafts_and_sewing": "craft product",
    "automotive": "automotive product",
    "beauty_and_personal_care": "beauty product",
    "cell_phones_and_accessories": "phone product",
    "clothing_shoes_and_jewelry": "fashion item",
    "electronics": "electronics product",
    "grocery_and_gourmet_food": "food product",
    "health_and_household": "health product",
    "health_and_personal_care": "health product",
    "home_and_kitchen": "home product",
    "industrial_and_scientific": "industrial product",
    "magazine_subscriptions": "magazine",
    "patio_lawn_and_garden": "garden product",
    "pet_supplies": "pet product",
    "software": "software product",
    "sports_and_outdoors": "sports product",
    "subscription_boxes": "subscription product",
    "tools_and_home_improvement": "tool",
    "toys_and_games": "toy",
    "unknown": "product",
})

# An empty reasoning block, as Qwen3 writes it when thinking is switched off. The answer-only
# student context is the chat prompt + EMPTY_THINK + ANSWER_OPEN; the teacher context is the chat
# prompt + the model's own reasoning through THINK_CLOSE + "\n\n" + ANSWER_OPEN. Both therefore end
# in "</think>\n\n<answer>", which tokenizes identically, so the last token is the aligned position.
EMPTY_THINK = f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n"
ANSWER_JOIN = "\n\n"


def item_noun(category: str) -> str:
    """The noun used for an item of `category` ("Movies" -> "movie", "Films" -> "film")."""
    key = category.strip().lower().replace(" ", "_").replace("&", "and")
    if key in _NOUNS:
        return _NOUNS[key]
    words = key.replace("-", "_").split("_")
    last = words[-1]
    if last.endswith("ies") and len(last) > 4:
        last = last[:-3] + "y"
    elif last.endswith("s") and not last.endswith("ss") and len(last) > 2:
        last = last[:-1]
    return " ".join([*words[:-1], last])


def system_prompt(category: str) -> str:
    """The instructions: the task, the response format, and no rating value a model could copy (an
    example `<answer>4.0</answer>` made an untouched SmolLM2-135M answer 4 on 200 of 200 rows, so a
    zero-shot row measured the example, not the model)."""
    noun = item_noun(category)
    return (
        f"You predict the star rating, from 1.0 to 5.0, that a user will give a candidate {noun}. "
        f"First reason step by step inside {THINK_OPEN} {THINK_CLOSE}. Then write only the rating, a "
        f"number with one decimal, inside {ANSWER_OPEN} </answer>."
    )


def format_sketch(liked: list[str], disliked: list[str], category: str) -> str:
    """The long-term interest sketch: liked and disliked topic lists; empty lists are omitted."""
    noun = item_noun(category)
    parts = []
    if liked:
        parts.append(f"Topics of {noun}s this user tends to rate highly:\n" + "\n".join(f"- {t}" for t in liked))
    if disliked:
        parts.append(f"Topics of {noun}s this user tends to rate low:\n" + "\n".join(f"- {t}" for t in disliked))
    return "\n\n".join(parts)


def user_prompt(
    category: str,
    history: str,
    target: str,
    sketch: str = "",
    max_history: int | None = 10,
) -> str:
    """Sketch (if any), the `max_history` most recent history lines (all with None), the candidate."""
    noun = item_noun(category)
    lines = history_lines(history)
    if max_history is not None:
        lines = lines[-max_history:] if max_history > 0 else []
    parts = []
    if sketch.strip():
        parts.append("Long-term interests:\n" + sketch.strip())
    if lines:
        parts.append(
            f"The user's {len(lines)} most recent ratings, oldest first (title, categories, rating):\n"
            + "\n".join(lines)
        )
    else:
        parts.append(f"The user has no earlier {noun} ratings.")
    parts.append(f"Candidate {noun}: {target.strip()}")
    parts.append(f"What rating from 1.0 to 5.0 will this user give the candidate {noun}?")
    return "\n\n".join(parts)


def build_messages(
    category: str,
    history: str,
    target: str,
    sketch: str = "",
    max_history: int | None = 10,
) -> list[dict]:
    """The chat list (system + user) stored in the verl parquet's `prompt` column."""
    return [
        {"role": "system", "content": system_prompt(category)},
        {"role": "user", "content": user_prompt(category, history, target, sketch, max_history)},
    ]


def chat_prompt_text(tokenizer, messages: list[dict]) -> str:
    """The chat-templated prompt with the generation prompt added (what the model continues).

    A thinking-only template (e.g. Qwen3-*-Thinking-2507's) ends the generation prompt with an open
    `<think>`: the response then never writes its own, so every GRPO format score would be -1 and
    the answer-only context would hold two think blocks. Such a template is refused here, where
    every stage renders its prompts.
    """
    from siren import SirenError

    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    if text.rstrip().endswith(THINK_OPEN):
        raise SirenError(
            f"the chat template of {getattr(tokenizer, 'name_or_path', None) or 'this tokenizer'} opens {THINK_OPEN} in "
            f"its generation prompt (a thinking-only template); SIREN's responses write their own "
            f"{THINK_OPEN}...{THINK_CLOSE}: use the model's template without the opened block"
        )
    return text


def answer_only_context(prompt_text: str) -> str:
    """Student input: prompt + empty think block + `<answer>`; the rating token comes next."""
    return prompt_text + EMPTY_THINK + ANSWER_OPEN


def teacher_context(prompt_text: str, reasoning: str) -> str:
    """Teacher input: prompt + the model's reasoning (through `</think>`) + `<answer>`."""
    reasoning = reasoning.rstrip()
    if not reasoning.endswith(THINK_CLOSE):
        reasoning += THINK_CLOSE
    return prompt_text + reasoning + ANSWER_JOIN + ANSWER_OPEN


def answer_tag_ids(tokenizer) -> list[int]:
    """The tokens of `<answer>`, which both contexts end with; the last one is the aligned position.

    Only these are compared between the teacher and the student: what precedes them is the
    model's own text in the teacher (a reasoning that ends in " </think>" tokenizes as " </" where
    the student's empty think block has "</"), and it does not move the aligned token.
    """
    return tokenizer.encode(ANSWER_OPEN, add_special_tokens=False)


@dataclass(frozen=True)
class PromptParts:
    """What `user_prompt` put in a user message, read back (for recipes built from the prompt alone)."""

    liked: list[str]
    disliked: list[str]
    history: list[str]      # "Title, categories, rating" lines, oldest first
    candidate: str          # "Title, categories"


def parse_user_prompt(text: str) -> PromptParts:
    """Read a `user_prompt` text back into its parts (the inverse of its layout, not of any wording
    a user could write elsewhere)."""
    liked: list[str] = []
    disliked: list[str] = []
    history: list[str] = []
    candidate = ""
    for block in text.split("\n\n"):
        head, _, body = block.partition("\n")
        lines = [line for line in body.split("\n") if line.strip()]
        if head.startswith("Long-term interests:"):
            head, _, body = body.partition("\n")
            lines = [line for line in body.split("\n") if line.strip()]
        if head.startswith("Topics of ") and head.endswith("tends to rate highly:"):
            liked = [line.removeprefix("- ") for line in lines]
        elif head.startswith("Topics of ") and head.endswith("tends to rate low:"):
            disliked = [line.removeprefix("- ") for line in lines]
        elif head.startswith("The user's ") and "most recent ratings" in head:
            history = lines
        elif block.startswith("Candidate "):
            candidate = block.partition(": ")[2].strip()
    return PromptParts(liked, disliked, history, candidate)
