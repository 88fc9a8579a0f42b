"""Literal tests of siren.metrics and siren.prompts."""

import math

import pytest

from siren.cli import str2bool
from siren.metrics import rating_metrics
from siren.prompts import (
    answer_only_context,
    build_messages,
    format_sketch,
    item_noun,
    system_prompt,
    teacher_context,
    user_prompt,
)


def test_metrics_on_literal_arrays():
    m = rating_metrics([5.0, 4.0, 3.0, 1.0], [5.0, 5.0, 1.0, 1.0])
    assert m["n"] == 4 and m["n_invalid"] == 0
    assert m["mae"] == pytest.approx((0 + 1 + 2 + 0) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 1 + 4 + 0) / 4))
    assert m["acc"] == pytest.approx(0.5)
    assert m["per_label"]["5.0"] == pytest.approx({"n": 2, "mae": 0.5, "rmse": math.sqrt(0.5), "acc": 0.5, "n_invalid": 0})
    assert m["per_label"]["1.0"]["mae"] == pytest.approx(1.0)
    assert m["prediction_counts"] == {"1": 1, "3": 1, "4": 1, "5": 1}


def test_metrics_invalid_left_out_or_filled():
    left_out = rating_metrics([None, 4.0], [5.0, 5.0])
    assert left_out["n_invalid"] == 1 and left_out["n_valid"] == 1
    assert left_out["mae"] == 1.0 and "left out" in left_out["scored_on"]
    assert left_out["per_label"]["5.0"]["n_invalid"] == 1
    filled = rating_metrics([None, 4.0], [5.0, 5.0], invalid_fill=5.0)
    assert filled["n_invalid"] == 1 and filled["mae"] == 0.5 and "filled with 5.0" in filled["scored_on"]
    nothing = rating_metrics([None], [3.0])
    assert nothing["mae"] is None and nothing["prediction_counts"] == {"invalid": 1}


def test_metrics_rounded_accuracy_for_continuous_predictions():
    m = rating_metrics([4.6, 3.4], [5.0, 3.0])
    assert m["acc"] == 0.0 and m["acc_rounded"] == 1.0
    with pytest.raises(ValueError):
        rating_metrics([1.0], [1.0, 2.0])


@pytest.mark.parametrize("category,noun", [
    ("Movies", "movie"), ("Books", "book"), ("Films", "film"), ("Video_Games", "video game"),
    ("Toys_and_Games", "toy"), ("All_Beauty", "beauty product"), ("Beauty", "beauty"), ("Comedies", "comedy"),
])
def test_item_noun(category, noun):
    assert item_noun(category) == noun


def test_prompt_uses_category_noun_and_last_n_lines():
    history = "\n".join(f"Title {i}, Drama, {i % 5 + 1}.0" for i in range(15))
    text = user_prompt("Films", history, "Alien, Sci-Fi", sketch="Topics of films...", max_history=10)
    assert "Candidate film: Alien, Sci-Fi" in text
    assert "book" not in text and "movie" not in text
    assert "Title 4," not in text and "Title 5, Drama" in text and "Title 14," in text
    assert text.index("Title 5,") < text.index("Title 14,")
    assert text.startswith("Long-term interests:\nTopics of films...")
    assert "10 most recent" in text
    assert "film" in system_prompt("Films") and "<answer>" in system_prompt("Films")


def test_instructions_hold_no_rating_value_to_copy():
    """An example `<answer>4.0</answer>` anchored an untouched model on 4; the only numbers left
    are the range's ends."""
    import re

    text = system_prompt("Movies")
    assert re.findall(r"\d(?:\.\d)?", text) == ["1.0", "5.0"]
    assert "<answer>" in text and "</answer>" in text and "one decimal" in text


def test_prompt_without_history_or_sketch():
    text = user_prompt("Books", "", "Dune, Fiction", max_history=10)
    assert "no earlier book ratings" in text and "Long-term" not in text
    assert user_prompt("Books", "A, B, 3\nC, D, 4", "X, Y", max_history=None).count(", 3") == 1
    messages = build_messages("Books", "A, B, 3", "X, Y")
    assert [m["role"] for m in messages] == ["system", "user"]


def test_sketch_lists_omitted_when_empty():
    assert format_sketch([], [], "Movies") == ""
    text = format_sketch(["Superhero"], [], "Movies")
    assert "movies this user tends to rate highly:\n- Superhero" in text and "low" not in text
    both = format_sketch(["A", "B"], ["C"], "Books")
    assert both.index("- A") < both.index("- B") < both.index("- C") and "books" in both


def test_teacher_and_student_contexts_end_alike():
    prompt = "<|im_start|>assistant\n"
    student = answer_only_context(prompt)
    teacher = teacher_context(prompt, "<think>because</think>")
    assert student.endswith("</think>\n\n<answer>") and teacher.endswith("</think>\n\n<answer>")
    assert teacher_context(prompt, "<think>cut off") .endswith("cut off</think>\n\n<answer>")


class _TemplateTokenizer:
    """Renders a chat the way a template would: the generation prompt is `suffix`."""

    name_or_path = "fake/Qwen3-4B-Thinking-2507"

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + self.suffix


def test_a_template_that_opens_think_in_the_generation_prompt_is_refused():
    from siren import SirenError
    from siren.prompts import chat_prompt_text

    messages = build_messages("Movies", "A, B, 3.0", "X, Y")
    assert chat_prompt_text(_TemplateTokenizer("<|assistant|>\n"), messages).endswith("<|assistant|>\n")
    for suffix in ("<|assistant|>\n<think>\n", "<|assistant|><think>"):
        with pytest.raises(SirenError, match=r"chat template of fake/Qwen3-4B-Thinking-2507 opens <think> in its "
                                             r"generation prompt \(a thinking-only template\)"):
            chat_prompt_text(_TemplateTokenizer(suffix), messages)
    # an empty think block (Qwen3's enable_thinking=False) is closed, not open
    assert chat_prompt_text(_TemplateTokenizer("<think>\n\n</think>\n\n"), messages)


@pytest.mark.parametrize("text,value", [("False", False), ("false", False), ("0", False), ("no", False),
                                        ("True", True), ("1", True), ("yes", True)])
def test_str2bool(text, value):
    assert str2bool(text) is value


def test_str2bool_rejects_junk():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        str2bool("maybe")
