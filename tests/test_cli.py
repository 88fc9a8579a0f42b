"""siren.cli: the shared flag vocabulary, its aliases, its types and the help layout."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import pytest

from siren import SirenError, cli
from siren.data import canonical_split


def _parser() -> argparse.ArgumentParser:
    parser = cli.stage_parser("Example stage.\n\n    python stage.py --model m\n")
    cli.add_category(parser)
    cli.add_model(parser, "model folder")
    cli.add_data_path(parser, "input data", aliases=("--instruction_path",))
    cli.add_output_dir(parser, "output folder")
    cli.add_split(parser)
    cli.add_limit(parser, aliases=("--max_samples",))
    cli.add_eval_limit(parser, aliases=("--max_eval_samples",))
    cli.add_batch_size(parser, default=8)
    cli.add_overwrite(parser)
    return parser


def test_canonical_names_and_the_authors_aliases_give_the_same_namespace():
    parser = _parser()
    canonical = parser.parse_args(["--category", "Books", "--model", "m", "--data_path", "d", "--output_dir", "o",
                                   "--split", "valid", "--limit", "3", "--eval_limit", "2"])
    aliases = parser.parse_args(["--data_category", "Books", "--model_path", "m", "--instruction_path", "d",
                                 "--out_dir", "o", "--split", "val", "--max_samples", "3", "--max_eval_samples", "2"])
    assert vars(canonical) == vars(aliases)
    assert canonical.split == "valid" and canonical.limit == 3 and canonical.batch_size == 8


@pytest.mark.parametrize("argv, message", [
    (["--model", "m", "--data_path", "d", "--limit", "0"], "must be at least 1"),
    (["--model", "m", "--data_path", "d", "--batch_size", "x"], "expected a whole number"),
    (["--model", "m", "--data_path", "d", "--split", "dev"], "unknown split"),
])
def test_bad_values_stop_argparse_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        _parser().parse_args(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_help_keeps_the_docstring_layout_and_shows_informative_defaults():
    text = _parser().format_help()
    assert "\n    python stage.py --model m\n" in text  # raw description: the command is not reflowed
    assert "(default: Movies)" in text and "(default: 8)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_canonical_split_literals():
    assert [canonical_split(s) for s in ("train", "valid", "val", "VAL", "validation", "test")] == [
        "train", "valid", "valid", "valid", "valid", "test"]
    with pytest.raises(SirenError, match="unknown split"):
        canonical_split("dev")


@dataclass
class _StageArguments:
    model: str = field(metadata={"help": "model folder", "aliases": ["--model_path"]})
    kd_ratio: float = field(default=1.0, metadata={"help": "alignment weight"})


def test_hf_parser_takes_stage_defaults_for_library_fields(tmp_path):
    from transformers import TrainingArguments

    parser = cli.hf_parser((_StageArguments, TrainingArguments), "Stage 5.", learning_rate=1e-4)
    stage, training = parser.parse_args_into_dataclasses(["--model_path", "m", "--output_dir", str(tmp_path)])
    assert stage.model == "m" and stage.kd_ratio == 1.0
    assert training.learning_rate == 1e-4 and training.output_dir == str(tmp_path)
    assert "(default: 0.0001)" in " ".join(parser.format_help().split())
