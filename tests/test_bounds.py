"""siren.bounds: one range check for the numbers of the training stages (3 and 5), before anything
loads. Stage 3's and stage 5's own cases live in test_grpo_trl.py and test_train_hidden_mask.py;
here the mechanism, and that both stages share it."""

from __future__ import annotations

import argparse
import math

import pytest

from siren import SirenError
from siren.bounds import NON_NEGATIVE, POSITIVE, TRAINING_BOUNDS, Bound, check_numbers, check_report_to


def test_a_bound_accepts_its_range_and_its_extra_values():
    steps = TRAINING_BOUNDS["max_steps"]
    assert [steps.accepts(v) for v in (-1, 1, 40, 0, -2, 1.5)] == [True, True, True, False, False, False]
    assert steps.describe() == "a whole number >= 1, or -1 (train for --num_train_epochs)"
    assert POSITIVE.describe() == "a finite number > 0" and NON_NEGATIVE.describe() == "a finite number >= 0"
    assert Bound(0, 1, high_open=True).describe() == "a finite number >= 0 and < 1"
    for value in (math.nan, math.inf, -math.inf, True, "1"):
        assert not Bound().accepts(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--scale", type=float, default=1.0)  # no bound: must still be finite
    parser.add_argument("--name", default="x")
    return parser


def test_check_numbers_names_the_flag_the_range_and_the_recipe():
    parser = _parser()
    check_numbers(parser, parser.parse_args([]), TRAINING_BOUNDS)
    with pytest.raises(SirenError, match=r"^--max_steps must be a whole number >= 1, or -1 \(train for "
                                         r"--num_train_epochs\), got 0$"):
        check_numbers(parser, parser.parse_args(["--max_steps", "0"]), TRAINING_BOUNDS)
    with pytest.raises(SirenError, match=r"^--learning_rate must be a finite number > 0, got -1.0 \(in r.yaml\)$"):
        check_numbers(parser, parser.parse_args(["--learning_rate=-1"]), TRAINING_BOUNDS,
                      {"learning_rate": "--config r.yaml"})
    with pytest.raises(SirenError, match=r"^--scale must be a finite number, got inf$"):
        check_numbers(parser, parser.parse_args(["--scale", "inf"]), TRAINING_BOUNDS)


def test_report_to_is_checked_against_the_installed_integrations():
    check_report_to(["none"])
    check_report_to("tensorboard")
    check_report_to([])
    with pytest.raises(SirenError, match=r"^--report_to: unknown integration 'bogus'; choose from none, all, .*wandb"):
        check_report_to(["tensorboard", "bogus"])


def test_stage_3_refuses_zero_steps_with_the_same_check():
    """`--max_steps 0` made zero optimizer steps in stage 3 too (transformers trains by epochs only
    when max_steps is negative)."""
    from siren.grpo_trl import parse_args

    with pytest.raises(SirenError, match=r"^--max_steps must be a whole number >= 1, or -1 \(train for "):
        parse_args(["--model", "m", "--max_steps", "0"])
