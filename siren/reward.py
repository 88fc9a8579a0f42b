"""The GRPO rule reward (docs/pipeline.md, stage 3), in the form verl 0.9.1 and TRL call it.

verl: `reward.custom_reward_function.path=<this file>` and `.name=compute_score`. verl loads this
file by path, so it imports the rest of `siren` absolutely (the package must be installed).
TRL: `TRL_REWARDS`, the same `compute_score` as two GRPOTrainer reward functions, `format_reward`
and `content_reward`, weighted 1 each: their sum is the score, and TRL logs each one's mean
(`rewards/format_reward/mean`, its eval twin), from which the format rate per step follows.

score = format + content, in [-3, 3]:
  format  +1 if exactly one <think>, </think>, <answer>, </answer> in that order, else -1
  content 2 - 4 * |clip(pred, 1, 5) - label| / (5 - 1); a missing or non-numeric answer scores -2
"""

from __future__ import annotations

from siren.answer import RATING_MAX, RATING_MIN, clip_rating, parse_response

INVALID_CONTENT = -2.0
# An invalid answer is charged the largest possible error; it is the error at which the content
# formula also gives -2, so the logged MAE and the reward agree.
INVALID_ERROR = RATING_MAX - RATING_MIN


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs) -> dict:
    """Score one response. Returns score, acc, mae, squared_error, format_score, content_score, valid."""
    label = float(ground_truth)
    parsed = parse_response(solution_str)
    format_score = 1.0 if parsed.format_ok else -1.0
    if parsed.rating is None:
        error = INVALID_ERROR
        content_score = INVALID_CONTENT
        acc = 0.0
    else:
        prediction = clip_rating(parsed.rating)
        error = abs(prediction - label)
        content_score = 2.0 - 4.0 * error / (RATING_MAX - RATING_MIN)
        acc = float(prediction == label)
    return {
        "score": format_score + content_score,
        "acc": acc,
        "mae": error,
        "squared_error": error * error,
        "format_score": format_score,
        "content_score": content_score,
        "valid": float(parsed.rating is not None),
    }


def _completion_text(completion) -> str:
    """TRL passes plain strings, or for chat datasets a list of messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return completion.get("content", "")
    return str(completion)


def _scores(key: str, completions, ground_truth, data_source) -> list[float]:
    if completions is None or ground_truth is None:
        raise ValueError("the TRL rewards need `completions` and a `ground_truth` dataset column")
    sources = data_source if data_source is not None else [None] * len(completions)
    return [
        compute_score(source, _completion_text(completion), truth)[key]
        for source, completion, truth in zip(sources, completions, ground_truth)
    ]


def trl_reward(prompts=None, completions=None, ground_truth=None, data_source=None, **kwargs) -> list[float]:
    """The whole score (format + content) as one GRPOTrainer reward function."""
    return _scores("score", completions, ground_truth, data_source)


def format_reward(prompts=None, completions=None, ground_truth=None, data_source=None, **kwargs) -> list[float]:
    """The format part of the score: +1 well formed, -1 not."""
    return _scores("format_score", completions, ground_truth, data_source)


def content_reward(prompts=None, completions=None, ground_truth=None, data_source=None, **kwargs) -> list[float]:
    """The content part of the score: 2 - 4 |error| / 4, -2 for a missing or non-numeric answer."""
    return _scores("content_score", completions, ground_truth, data_source)


# What GRPOTrainer gets (reward_weights default to 1 each): the same total as trl_reward.
TRL_REWARDS = (format_reward, content_reward)
