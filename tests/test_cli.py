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


@pytest.mark.parametrize("argv, message", [
    (["--rate", "nan"], "argument --rate/--old_rate: must be a finite number, got nan"),
    (["--old_rate", "inf"], "argument --rate/--old_rate: must be a finite number, got inf"),
    (["--sizes", "1.5", "NaN"], "argument --sizes: must be a finite number, got nan"),
])
def test_no_number_flag_of_a_stage_takes_nan_or_inf(argv, message, capsys):
    """Issue 20: nan fails every comparison, so a stage's `if value < 0` check let `--temperature nan` run."""
    parser = cli.stage_parser("python stage.py")
    parser.add_argument("--rate", "--old_rate", type=float, default=0.0)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1.0])
    assert parser.parse_args(["--rate", "-2.5", "--sizes", "0", "1e30"]).sizes == [0.0, 1e30]  # finite: the stage's range
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == f"error: {message} (see {parser.prog} --help)\n"


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


def test_help_shows_a_default_of_zero():
    """`0 in (None, False)` is true in Python: a default of 0 (e.g. LoRA rank 0 = full fine-tuning) was hidden."""
    parser = cli.stage_parser("Example.")
    parser.add_argument("--lora_r", type=int, default=0, help="LoRA rank; 0 = full fine-tuning")
    parser.add_argument("--switch", action="store_true", help="a switch")
    text = " ".join(parser.format_help().split())
    assert "0 = full fine-tuning (default: 0)" in text and "(default: False)" not in text


@dataclass
class _Settings:
    category: str = field(default="Movies", metadata={"help": "the category", "group": "data", "add": cli.add_category})
    k: int = field(default=20, metadata={"help": "topics", "type": cli.positive_int, "aliases": ["--n_topics"]})
    rule: str = field(default="mean", metadata={"help": "the rule", "choices": ("mean", "count")})
    cache: str | None = field(default=None, metadata={"help": "cache folder", "group": "data"})
    verbose: bool = field(default=False, metadata={"help": "say more"})


def test_flags_generated_from_a_dataclass_keep_default_type_help_and_aliases(capsys):
    parser = cli.stage_parser("Stage.")
    cli.add_dataclass_flags(parser, _Settings)
    assert vars(parser.parse_args([])) == {"category": "Movies", "k": 20, "rule": "mean", "cache": None,
                                           "verbose": False}
    args = parser.parse_args(["--data_category", "Books", "--n_topics", "5", "--rule", "count", "--cache", "c",
                              "--verbose", "yes"])
    assert _Settings(**vars(args)) == _Settings("Books", 5, "count", "c", True)
    text = " ".join(parser.format_help().split())
    assert "data: --category CATEGORY, --data_category CATEGORY the category (default: Movies)" in text
    assert "topics (default: 20)" in text and "cache folder" in text
    for argv in (["--k", "0"], ["--rule", "median"], ["--category", "../x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert "is not a name" in capsys.readouterr().err


def test_a_field_without_help_is_a_programming_error():
    @dataclass
    class Undocumented:
        k: int = 3

    with pytest.raises(TypeError, match="Undocumented.k has no help text"):
        cli.add_dataclass_flags(cli.stage_parser(""), Undocumented)
