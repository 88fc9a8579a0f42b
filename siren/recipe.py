"""Settings from a `--config` YAML recipe and the command line, with one rule of precedence.

A value the user gave beats the default; a setting the user gave twice is refused, whether twice
on the command line, once in the recipe and once on the command line, or under two names of one
setting. (TRL's `TrlParser.parse_args_and_config` lets a flag silently win over the recipe, and
passes recipe values around argparse's types, so `beta: [1, 2]` trained until the first step.)
Recipe values go through the same argparse types as flags, so a wrong type stops the run before
anything loads, and every number is checked against its range (`check_numbers`) before a
dataclass is built. Errors are one line (SirenError).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from siren import SirenError

UNBOUNDED = math.inf


@dataclass(frozen=True)
class Bound:
    """A number's range: low (inclusive unless low_open) to high (inclusive unless high_open)."""

    low: float = -UNBOUNDED
    high: float = UNBOUNDED
    low_open: bool = False
    high_open: bool = False
    whole: bool = False

    def describe(self) -> str:
        kind = "a whole number" if self.whole else "a finite number"
        parts = []
        if self.low != -UNBOUNDED:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high != UNBOUNDED:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return f"{kind} {' and '.join(parts)}".rstrip()

    def accepts(self, value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.whole and value != int(value):
            return False
        if value < self.low or (self.low_open and value == self.low):
            return False
        return not (value > self.high or (self.high_open and value == self.high))


POSITIVE = Bound(0, low_open=True)
NON_NEGATIVE = Bound(0)
# TrainingArguments' numbers (transformers checks almost none of them: a negative learning rate or
# weight decay trains, 0 epochs saves the untrained model).
TRAINING_BOUNDS = {
    "learning_rate": POSITIVE, "weight_decay": NON_NEGATIVE, "max_grad_norm": NON_NEGATIVE,
    "adam_beta1": Bound(0, 1, high_open=True), "adam_beta2": Bound(0, 1, high_open=True),
    "adam_epsilon": POSITIVE, "num_train_epochs": POSITIVE, "max_steps": Bound(-1, whole=True),
    "per_device_train_batch_size": Bound(1, whole=True), "per_device_eval_batch_size": Bound(1, whole=True),
    "gradient_accumulation_steps": Bound(1, whole=True), "warmup_ratio": Bound(0, 1), "warmup_steps": NON_NEGATIVE,
    "logging_steps": POSITIVE, "save_steps": POSITIVE, "eval_steps": POSITIVE, "save_total_limit": Bound(1, whole=True),
    "seed": Bound(0, whole=True), "dataloader_num_workers": Bound(0, whole=True),
}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _raise_one_line(parser: argparse.ArgumentParser):
    def error(message: str):
        raise SirenError(_one_line(message))

    parser.error = error
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _raise_one_line(sub)


def load_recipe(path: str) -> dict:
    """The YAML mapping of `--config path`, or a one-line error."""
    import yaml

    recipe = Path(path)
    if not recipe.is_file():
        raise SirenError(f"--config needs a YAML recipe file, got {path or 'nothing'}")
    try:
        values = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or err
        raise SirenError(f"--config {path} is not valid YAML{where}: {_one_line(problem)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SirenError(f"--config {path}: cannot read it ({_one_line(err)})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SirenError(f"--config {path} must hold a YAML mapping of setting: value, got {type(values).__name__}")
    return values


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    config, rest, position = None, [], 0
    while position < len(argv):
        token = argv[position]
        if token == "--config" or token.startswith("--config="):
            if config is not None:
                raise SirenError("--config is given twice; give one recipe")
            if token == "--config":
                if position + 1 >= len(argv):
                    raise SirenError("--config needs a YAML recipe file, got nothing")
                config, position = argv[position + 1], position + 2
            else:
                config, position = token.split("=", 1)[1], position + 1
            continue
        rest.append(token)
        position += 1
    return config, rest


def _action_of(parser: argparse.ArgumentParser, dest: str) -> argparse.Action | None:
    return next((action for action in parser._actions if action.dest == dest and action.option_strings), None)


def _recipe_tokens(parser: argparse.ArgumentParser, recipe: dict, path: str) -> list[str]:
    tokens = []
    for key, value in recipe.items():
        action = _action_of(parser, str(key))
        if action is None or action.dest == "config":
            raise SirenError(f"--config {path}: unknown setting {key!r}")
        if value is None:
            raise SirenError(f"--config {path}: {key} is null; leave the key out to keep its default")
        flag = action.option_strings[0]
        takes_list = action.nargs in ("+", "*")
        if isinstance(value, list):
            if not takes_list:
                raise SirenError(f"--config {path}: {key} takes one value, got the list {value!r}")
            tokens += [flag, *map(str, value)]
        elif isinstance(value, dict):
            tokens.append(f"{flag}={json.dumps(value)}")
        elif isinstance(value, bool):
            tokens.append(f"{flag}={str(value).lower()}")
        else:  # --flag=value: argparse would take a value such as -1e-6 for an option
            tokens.append(f"{flag}={value}")
    return tokens


def _command_line_dests(parser: argparse.ArgumentParser, argv: list[str]) -> dict[str, str]:
    """dest -> the flag that set it; a setting given twice on the command line is refused."""
    given: dict[str, str] = {}
    for token in argv:
        if not token.startswith("--"):
            continue
        flag = token.split("=", 1)[0]
        action = parser._option_string_actions.get(flag)
        if action is None or action.dest == "help":
            continue
        if action.dest in given:
            raise SirenError(f"{action.dest} is given twice on the command line ({given[action.dest]} and {flag}); "
                             "give it once")
        given[action.dest] = flag
    return given


def parse_settings(parser: argparse.ArgumentParser, argv: list[str],
                   same_setting: dict[str, str] | None = None) -> tuple[argparse.Namespace, dict[str, str]]:
    """(namespace, {dest: where the user gave it}) from the recipe and the command line.

    `same_setting` maps a dest to another dest that sets the same thing (e.g. prompts per step and
    gradient accumulation steps): giving both is a clash too.
    """
    parser.allow_abbrev = False  # `--learn 1e-5` must not silently mean --learning_rate
    _raise_one_line(parser)
    if "--config" not in parser._option_string_actions:  # read here, before argparse; declared for --help
        parser.add_argument("--config", metavar="RECIPE_YAML", default=None,
                            help="a YAML file of setting: value (any flag's name); a setting given there and as a "
                                 "flag is refused")
    config, argv = _split_config(list(argv))
    recipe_tokens, given = [], {}
    if config is not None:
        recipe = load_recipe(config)
        for key, value in (recipe.pop("env", None) or {}).items():  # TRL's recipes may set environment variables
            os.environ[str(key)] = str(value)
        recipe_tokens = _recipe_tokens(parser, recipe, config)
        given = {str(key): f"--config {config}" for key in recipe}
    for dest, flag in _command_line_dests(parser, argv).items():
        if dest in given:
            raise SirenError(f"{dest} is given twice: in {given[dest].removeprefix('--config ')} and as {flag} on the "
                             "command line; give it once")
        given[dest] = flag
    for first, second in (same_setting or {}).items():
        if first in given and second in given:
            raise SirenError(f"{first} ({given[first]}) and {second} ({given[second]}) set the same thing; give one")
    namespace = parser.parse_args(recipe_tokens + argv)
    return namespace, given


def check_numbers(parser: argparse.ArgumentParser, namespace: argparse.Namespace, bounds: dict[str, Bound],
                  given: dict[str, str]) -> None:
    """Every float setting finite, and every setting of `bounds` in range (None = unset is allowed)."""
    for action in parser._actions:
        value = getattr(namespace, action.dest, None)
        bound = bounds.get(action.dest)
        if value is None or isinstance(value, (list, str, bool)) or not action.option_strings:
            continue
        where = f" (in {given[action.dest].removeprefix('--config ')})" \
            if given.get(action.dest, "").startswith("--config ") else ""
        if bound is not None and not bound.accepts(value):
            raise SirenError(f"{action.option_strings[0]} must be {bound.describe()}, got {value}{where}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SirenError(f"{action.option_strings[0]} must be a finite number, got {value}{where}")


def build_dataclasses(dataclass_types, namespace: argparse.Namespace) -> list:
    """The dataclasses from the namespace, as HfArgumentParser.parse_args_into_dataclasses builds
    them; their own checks (GRPOConfig's __post_init__) become one-line errors."""
    import dataclasses

    built = []
    for dtype in dataclass_types:
        names = {field.name for field in dataclasses.fields(dtype) if field.init}
        try:
            built.append(dtype(**{name: getattr(namespace, name) for name in names if hasattr(namespace, name)}))
        except ValueError as err:
            raise SirenError(_one_line(err)) from None
    return built
