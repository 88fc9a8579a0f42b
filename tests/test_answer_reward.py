"""Literal-string tests of answer parsing and the GRPO reward."""

import pytest

from siren.answer import check_format, extract_answer, extract_reasoning, parse_rating, parse_response
from siren.reward import TRL_REWARDS, compute_score, content_reward, format_reward, trl_reward

GOOD = "<think>The user loves sci-fi.</think><answer>{}</answer>"


def score(response, label="4"):
    return compute_score("AmazonReviews/Movies", response, label)


def test_well_formed_half_star_off():
    result = score(GOOD.format("4.5"), "4")
    assert result["format_score"] == 1.0
    assert result["content_score"] == pytest.approx(1.5)
    assert result["score"] == pytest.approx(2.5)
    assert result["acc"] == 0.0
    assert result["mae"] == pytest.approx(0.5)
    assert result["squared_error"] == pytest.approx(0.25)


def test_exact_answer_scores_three():
    result = score(GOOD.format("4"), "4.0")
    assert result["score"] == 3.0 and result["acc"] == 1.0 and result["mae"] == 0.0


def test_missing_think_close_loses_format_point():
    result = score("<think>hmm<answer>4</answer>", "4")
    assert result["format_score"] == -1.0
    assert result["content_score"] == 2.0
    assert result["score"] == 1.0


def test_two_answer_blocks_fail_format_and_last_is_graded():
    response = "<think>a</think><answer>1</answer><answer>4</answer>"
    result = score(response, "4")
    assert result["format_score"] == -1.0
    assert result["content_score"] == 2.0
    assert parse_response(response).rating == 4.0


def test_answer_above_range_is_clipped():
    result = score(GOOD.format("7"), "5")
    assert result["content_score"] == 2.0 and result["acc"] == 1.0
    low = score(GOOD.format("-3"), "1")
    assert low["content_score"] == 2.0


@pytest.mark.parametrize("answer", ["four", "", "   ", "4 stars", "nan", "inf"])
def test_non_numeric_answer_gets_minus_two(answer):
    result = score(GOOD.format(answer), "4")
    assert result["content_score"] == -2.0
    assert result["valid"] == 0.0
    assert result["acc"] == 0.0
    assert result["mae"] == 4.0
    assert result["score"] == pytest.approx(-1.0)


def test_missing_answer_gets_minus_two_and_format_minus_one():
    result = score("<think>no answer</think>", "3")
    assert result == pytest.approx({"score": -3.0, "acc": 0.0, "mae": 4.0, "squared_error": 16.0,
                                    "format_score": -1.0, "content_score": -2.0, "valid": 0.0})


@pytest.mark.parametrize("answer", [" 4 ", "4.", " 4.0. ", "\n4\n", "+4"])
def test_whitespace_and_trailing_period_are_tolerated(answer):
    result = score(GOOD.format(answer), "4")
    assert result["content_score"] == 2.0 and result["format_score"] == 1.0


def test_label_as_string_with_decimal():
    assert score(GOOD.format("5"), "5.0")["score"] == 3.0
    assert score(GOOD.format("5"), 5.0)["score"] == 3.0


def test_tag_order_matters():
    assert not check_format("<answer>4</answer><think>x</think>")
    assert not check_format("</think><think>x<answer>4</answer>")
    assert check_format("<think>\nx\n</think>\n\n<answer>4</answer>")


def test_extract_helpers():
    response = "<think>r</think>\n<answer> 3 </answer>"
    assert extract_answer(response) == " 3 "
    assert extract_reasoning(response) == "<think>r</think>"
    assert extract_reasoning("no tags") is None
    assert extract_answer("<answer>4") is None
    assert parse_rating("2.5") == 2.5 and parse_rating(".5") == 0.5 and parse_rating("4..") is None


def test_verl_extra_kwargs_are_accepted():
    result = compute_score(
        data_source="AmazonReviews/Books", solution_str=GOOD.format("3"), ground_truth="3.0",
        extra_info={"split": "train", "index": 0}, reward_router_address=None,
    )
    assert result["score"] == 3.0


def test_trl_reward_plain_and_conversational():
    completions = [GOOD.format("4"), [{"role": "assistant", "content": GOOD.format("2")}]]
    assert trl_reward(prompts=["p", "p"], completions=completions, ground_truth=["4.0", "4.0"]) == [3.0, 1.0 + 0.0]


def test_the_trl_rewards_add_up_to_the_score():
    completions = ["<think>x</think><answer>4.0</answer>", "<answer>2.0</answer>", "no answer"]
    truth = ["4.0", "4.0", "3.0"]
    assert format_reward(completions=completions, ground_truth=truth) == [1.0, -1.0, -1.0]
    assert content_reward(completions=completions, ground_truth=truth) == [2.0, 0.0, -2.0]
    totals = [sum(parts) for parts in zip(*(f(completions=completions, ground_truth=truth) for f in TRL_REWARDS))]
    assert totals == trl_reward(completions=completions, ground_truth=truth) == [3.0, -1.0, -3.0]
