"""The one place that owns SIREN's prompt wording and the chat contexts built around it.

Everything that builds a prompt imports from here: the sketch text (stage 1), the verl parquet
(stage 2), the teacher context for hidden-state extraction (4b) and the answer-only student
context (4c, 5, 6). The tags themselves belong to `siren.answer`.
"""

from __future__ import annotations

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
    noun = item_noun(category)
    return (
        f"You predict the star rating, from 1.0 to 5.0, that a user will give a candidate {noun}. "
        f"First reason step by step inside {THINK_OPEN} {THINK_CLOSE}. Then write only the numeric "
        f"rating inside {ANSWER_OPEN} </answer>, for example {ANSWER_OPEN}4.0</answer>."
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
    """The chat-templated prompt with the generation prompt added (what the model continues)."""
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


def answer_only_context(prompt_text: str) -> str:
    """Student input: prompt + empty think block + `<answer>`; the rating token comes next."""
    return prompt_text + EMPTY_THINK + ANSWER_OPEN


def teacher_context(prompt_text: str, reasoning: str) -> str:
    """Teacher input: prompt + the model's reasoning (through `</think>`) + `<answer>`."""
    reasoning = reasoning.rstrip()
    if not reasoning.endswith(THINK_CLOSE):
        reasoning += THINK_CLOSE
    return prompt_text + reasoning + ANSWER_JOIN + ANSWER_OPEN


# The text both contexts end with; its tokens must agree between them.
ALIGNED_TAIL = THINK_CLOSE + ANSWER_JOIN + ANSWER_OPEN


def aligned_tail_ids(tokenizer) -> list[int]:
    return tokenizer.encode(ALIGNED_TAIL, add_special_tokens=False)
