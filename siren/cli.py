r"""The command line every stage script shares: one vocabulary of flags, and the process wrapper.

One concept, one flag, in every script (the authors' README names stay accepted as aliases):

    --category      dataset category (`Movies`, `Books`, ...)            alias --data_category
    --data_root     folder holding <category>/ (source data files)
    --model         model folder: weights + tokenizer                     alias --model_path
    --data_path     the stage's input data: a folder or file              e.g. alias --instruction_path
    --output_dir    the stage's output folder                             alias --out_dir
    --split         train | valid | test (`val` means valid)
    --limit         first N rows of the split the stage processes
    --eval_limit    first N rows of the evaluation split (training stages)
    --overwrite     replace the stage's own finished outputs

Training settings are the Hugging Face / TRL dataclass fields (`--learning_rate`,
`--num_train_epochs`, `--save_steps`, ...), parsed with `HfArgumentParser` through `hf_parser`.
Every parser shows each flag's default in `--help` (`HelpFormatter`), so help texts never spell it.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterable

from siren import SirenError


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the module docstring's layout (its example command) and appends each flag's default.

    Defaults that say nothing (None, False of a switch, an empty list) are left out; a help text
    says what unset means.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        # Identity for None and False: `0 in (None, False)` is true, and a default of 0 says something.
        if action.default is None or action.default is False or action.default in ([], ()) \
                or action.default is argparse.SUPPRESS:
            return action.help or ""
        return super()._get_help_string(action)


class StageArgumentParser(argparse.ArgumentParser):
    """argparse, except that a bad command line ends in one `error: ...` line (exit 2), as every
    other refusal of a stage does, instead of the usage block followed by `prog: error: ...`, and
    that no number flag takes nan or inf: `float("nan")` parses, and then fails every comparison,
    so a range check written as `if value < 0: refuse` lets it through (4a's `--temperature nan`
    ran greedy). The ranges themselves stay with the stage (or `siren.bounds`)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            values = getattr(namespace, action.dest, None) if action.option_strings else None
            for value in values if isinstance(values, (list, tuple)) else [values]:
                if isinstance(value, float) and not math.isfinite(value):
                    self.error(f"argument {'/'.join(action.option_strings)}: must be a finite number, got {value}")
        return namespace, extras


def stage_parser(doc: str | None) -> argparse.ArgumentParser:
    """The parser of a stage script: its module docstring as the description."""
    return StageArgumentParser(description=doc, formatter_class=HelpFormatter)


def hf_parser(dataclass_types: Iterable, doc: str | None, parser_class=None, **defaults):
    """An `HfArgumentParser` (or `parser_class`, e.g. TRL's `TrlParser`) over `dataclass_types`,
    with the script's docstring, the same help layout as `stage_parser`, and the stage's own
    defaults for library fields (e.g. `learning_rate=1e-4`)."""
    if parser_class is None:
        from transformers import HfArgumentParser as parser_class
    parser = parser_class(list(dataclass_types), description=doc, formatter_class=HelpFormatter)
    if defaults:
        parser.set_defaults(**defaults)
    return parser


def _bounded_int(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
        return number

    parse.__name__ = f"int>={minimum}"
    return parse


positive_int = _bounded_int(1)
nonnegative_int = _bounded_int(0)


def split_name(value: str) -> str:
    """argparse type of --split: train, valid or test; `val` (verl's file name) means valid."""
    from siren.data import canonical_split

    try:
        return canonical_split(value)
    except SirenError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def category_name(value: str) -> str:
    """argparse type of --category: one folder name, never a path (siren.data.check_category_name)."""
    from siren.data import check_category_name

    try:
        return check_category_name(value)
    except SirenError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_category(parser, default: str | None = "Movies", help: str = "dataset category") -> None:
    parser.add_argument("--category", "--data_category", dest="category", type=category_name, default=default,
                        help=help)


def add_data_root(parser) -> None:
    parser.add_argument("--data_root", default=None,
                        help="folder holding <category>/; unset: $SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data")


def add_model(parser, help: str, required: bool = True, aliases: Iterable[str] = ("--model_path",), **kwargs) -> None:
    parser.add_argument("--model", *aliases, dest="model", required=required, help=help, **kwargs)


def add_data_path(parser, help: str, required: bool = True, aliases: Iterable[str] = (), **kwargs) -> None:
    parser.add_argument("--data_path", *aliases, dest="data_path", required=required, help=help, **kwargs)


def add_output_dir(parser, help: str, default: str | None = None, required: bool = False) -> None:
    parser.add_argument("--output_dir", "--out_dir", dest="output_dir", default=default, required=required, help=help)


def add_split(parser, default: str = "test", help: str = "split: train, valid (or val) or test") -> None:
    parser.add_argument("--split", type=split_name, default=default, help=help)


def add_limit(parser, help: str = "only the first N rows of the split (unset: all)", aliases: Iterable[str] = ()) -> None:
    parser.add_argument("--limit", *aliases, dest="limit", type=positive_int, default=None, help=help)


def add_eval_limit(parser, help: str = "only the first N rows of the evaluation split (unset: all)",
                   aliases: Iterable[str] = ()) -> None:
    parser.add_argument("--eval_limit", *aliases, dest="eval_limit", type=positive_int, default=None, help=help)


def add_overwrite(parser, help: str = "replace this stage's own finished outputs") -> None:
    parser.add_argument("--overwrite", action="store_true", help=help)


def add_batch_size(parser, default: int, help: str = "rows per forward pass, per process") -> None:
    parser.add_argument("--batch_size", type=positive_int, default=default, help=help)


def add_dtype(parser, help: str = "model dtype; auto = bfloat16 on a CUDA device that supports it, else float32") -> None:
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto", help=help)


def add_dataclass_flags(parser, settings_class, groups: dict | None = None) -> None:
    """One flag per field of the dataclass `settings_class`, defined by the field alone.

    `--<name>` takes the field's default; the field's metadata gives `help` (required), `type`
    (else the type of the default, str for None), `choices`, `aliases` (the authors' names),
    `group` (an argument group title: taken from `groups`, else made and added there) and `add`:
    a function of this module that defines a shared flag (e.g. `add_category`), called with the
    field's default and help. So a stage's settings object and its command line cannot drift apart.
    """
    import dataclasses

    groups = {} if groups is None else groups
    for setting in dataclasses.fields(settings_class):
        meta = setting.metadata
        if "help" not in meta:
            raise TypeError(f"{settings_class.__name__}.{setting.name} has no help text in its metadata")
        title = meta.get("group")
        target = parser
        if title is not None:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            target = groups[title]
        if "add" in meta:
            meta["add"](target, default=setting.default, help=meta["help"])
            continue
        if setting.default is dataclasses.MISSING:
            raise TypeError(f"{settings_class.__name__}.{setting.name} needs a default to be a flag")
        default_type = str if setting.default is None else type(setting.default)
        value_type = meta.get("type", str2bool if default_type is bool else default_type)
        options = {"choices": meta["choices"]} if "choices" in meta else {}
        target.add_argument(f"--{setting.name}", *meta.get("aliases", ()), dest=setting.name, type=value_type,
                            default=setting.default, help=meta["help"], **options)


def str2bool(value: str | bool) -> bool:
    """Parse a boolean flag value. `type=bool` would read the string "False" as True."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in {"1", "true", "t", "yes", "y", "on"}:
        return True
    if lowered in {"0", "false", "f", "no", "n", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


# The error file torch's launcher (under `accelerate launch` or torchrun) gives each process it
# starts: what a failed process writes there is what the launcher reports as that process's error.
LAUNCHER_ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"


def _tell_the_launcher(line: str) -> None:
    """Under a launcher, write the one-line error where it looks for a process's error (the format
    torch's ProcessFailure reads: a string message and a timestamp), so `python -m siren.launch`
    can print it last and the launcher's own report names it."""
    import json
    import os
    import time

    path = os.environ.get(LAUNCHER_ERROR_FILE_ENV)
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"message": line, "timestamp": int(time.time())}, handle)
    except OSError:
        pass  # the one line is on stderr already


def close_process_group() -> None:
    """Shut down this process's torch.distributed group, if it joined one (a local call, not a
    collective). A process that exits with its group still open can abort at exit ("terminate
    called without an active exception", SIGABRT, seen on gloo when ranks refuse together under
    load) instead of ending with its exit status. Does not import torch for a stage that never did."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_main(main: Callable[[], object]) -> int:
    """Run a script's main(); a SirenError becomes a one-line message and exit status 2. The
    process group, if any, is closed on every way out."""
    try:
        main()
    except SirenError as err:
        line = f"error: {err}"
        print(line, file=sys.stderr)
        _tell_the_launcher(line)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        close_process_group()
    return 0
