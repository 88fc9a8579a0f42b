"""Settings from a `--config` YAML recipe and the command line, with one rule of precedence.

A value the user gave beats the default; a setting the user gave twice is refused, whether twice
on the command line, once in the recipe and once on the command line, or under two names of one
setting. (TRL's `TrlParser.parse_args_and_config` lets a flag silently win over the recipe, and
passes recipe values around argparse's types, so `beta: [1, 2]` trained until the first step.)
Recipe values go through the same argparse types as flags, so a wrong type stops the run before
anything loads; the stage then checks every number against its range (`siren.bounds.check_numbers`)
before a dataclass is built. Errors are one line (SirenError).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from siren import SirenError


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
