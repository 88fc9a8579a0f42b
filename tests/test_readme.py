"""Every command in the code blocks of README.md and docs/*.md, and in the docstrings of the Python
scripts (the command each one opens with), names scripts, flags, settings and make targets that exist.

A Python script's flags are read from its own argument parser: the script runs up to the moment it
parses its arguments (then stops), so flags added by shared helpers or dataclass parsers count, and
a flag the parser would reject fails here. A shell script's flags and environment settings must
appear in its source.
"""

from __future__ import annotations

import argparse
import ast
import re
import runpy
import shlex
import sys
from functools import cache
from pathlib import Path
from unittest import mock

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
REPO_FILE = re.compile(r"^(?:\./)?((?:[\w-]+/)*[\w-]+\.(?:py|sh|yaml))$")
ENV_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")


def doc_commands(path: Path) -> list[str]:
    """The shell commands of a markdown file's bash/sh blocks: continuation lines joined, comments
    dropped, `a && b`, `a; b` and `a | b` split into their commands."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands += [part.strip() for part in re.split(r"&&|\|\||;|\|", line) if part.strip()]
    return commands


SCRIPTS = sorted([*REPO.glob("*.py"), *(REPO / "scripts").glob("*.py")])
DOCSTRING_COMMAND = re.compile(r"^(?:[A-Z_]+=\S*\s+)*(?:python3?|accelerate|bash|torchrun)\s")


def docstring_commands(path: Path) -> list[str]:
    """The commands in a script's module docstring: indented lines (its code blocks) that start with
    python, accelerate, bash or torchrun (after any VAR=value settings), continuation lines joined,
    comments dropped, runs of spaces made one."""
    text = ast.get_docstring(ast.parse(path.read_text())) or ""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        if not line.startswith("    "):
            continue  # prose
        line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
        if DOCSTRING_COMMAND.match(line):
            commands += [part.strip() for part in re.split(r"&&|\|\||;|\|", line) if part.strip()]
    return commands


def all_commands() -> list[tuple[str, str]]:
    return [(path.relative_to(REPO).as_posix(), command) for path in DOCS for command in doc_commands(path)]


class _Parsed(BaseException):
    """Raised in place of parsing, to stop a script once its parser is built (BaseException, so no
    `except Exception` in a script can swallow it)."""


def _all_option_strings(parser: argparse.ArgumentParser) -> set[str]:
    flags = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _all_option_strings(sub)
    return flags


@cache
def python_script_flags(relative: str) -> frozenset[str]:
    """The option strings the script's argument parser accepts (aliases included)."""
    parsers = []

    def capture(self, args=None, namespace=None):
        parsers.append(self)
        raise _Parsed

    path = REPO / relative
    saved_path = list(sys.path)
    with mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture), \
            mock.patch.object(sys, "argv", [str(path)]):
        try:
            runpy.run_path(str(path), run_name="__main__")
        except _Parsed:
            pass
        finally:
            sys.path[:] = saved_path
    assert parsers, f"{relative} finished without parsing any arguments"
    return frozenset(_all_option_strings(parsers[0]))


def _module_path(module: str) -> str | None:
    """`siren.grpo_trl` -> `siren/grpo_trl.py` when that file is in the repo."""
    relative = module.replace(".", "/") + ".py"
    return relative if (REPO / relative).is_file() else None


def check_command(command: str) -> int:
    """Assert that what `command` names exists; returns how many flags and settings it checked."""
    words = shlex.split(command)
    env = []
    while words and ENV_ASSIGNMENT.match(words[0]):
        env.append(ENV_ASSIGNMENT.match(words.pop(0)).group(1))
    if not words:
        return 0  # a variable assignment such as GRPO=ckpt/...
    if words[0] == "make":
        makefile = (REPO / "Makefile").read_text()
        targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
        for target in words[1:]:
            if not target.startswith("-") and "=" not in target:
                assert target in targets, f"no make target {target!r}: {command}"
        return 0

    script, rest = None, []
    for position, word in enumerate(words):
        match = REPO_FILE.match(word)
        if match and not word.startswith(("data/", "results", "ckpt/")):
            assert (REPO / match.group(1)).is_file(), f"{match.group(1)} does not exist: {command}"
            if script is None and not word.endswith(".yaml"):
                script, rest = match.group(1), words[position + 1:]
        elif word == "-m" and position + 1 < len(words) and script is None:
            module = _module_path(words[position + 1])
            if module:
                script, rest = module, words[position + 2:]
    if script is None:
        return 0  # a command of another tool (cp, pip, ...)

    flags = [word.split("=", 1)[0] for word in rest if re.match(r"^--[\w-]+", word)]
    checked = 0
    if script.endswith(".py"):
        accepted = python_script_flags(script)
        for flag in flags:
            assert flag in accepted, f"{script} does not accept {flag}: {command}"
            checked += 1
    else:
        source = (REPO / script).read_text()
        for flag in flags:
            assert flag in source, f"{script} does not handle {flag}: {command}"
            checked += 1
        for name in env:
            assert re.search(rf"\$\{{?{name}\b", source), f"{script} does not read {name}: {command}"
            checked += 1
    return checked


def test_readme_starts_with_the_make_commands():
    commands = doc_commands(REPO / "README.md")
    # The guide's rule: the README opens with exactly these two commands.
    assert commands[:2] == ["make demo", "make test"] and not commands[2].startswith("make ")
    assert len(commands) > 15


def test_docs_have_commands():
    per_file = {path.relative_to(REPO).as_posix(): len(doc_commands(path)) for path in DOCS}
    assert set(per_file) >= {"README.md", "docs/pipeline.md", "docs/benchmarks.md"}
    assert all(per_file.values()), per_file


@pytest.mark.parametrize("doc", [path.relative_to(REPO).as_posix() for path in DOCS])
def test_every_script_flag_setting_and_make_target_exists(doc):
    commands = doc_commands(REPO / doc)
    checked = sum(check_command(command) for command in commands)
    assert checked > (30 if doc in ("README.md", "docs/pipeline.md") else 0), checked


@pytest.mark.parametrize("script", [path.relative_to(REPO).as_posix() for path in SCRIPTS if path.name != "setup.py"])
def test_every_script_docstring_command_names_what_exists(script):
    # STYLE.md: a script's docstring holds a complete command that works; its flags are checked
    # against the script's own parser, as the README's are.
    commands = docstring_commands(REPO / script)
    assert commands, f"{script}'s docstring shows no command"
    assert any(script in shlex.split(command) for command in commands), f"no docstring command runs {script}"
    for command in commands:
        check_command(command)


def test_core_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    assert {"demo", "test", "test-fast", "lint", "install"} <= targets


def test_the_checker_catches_what_it_should():
    check_command("accelerate launch --num_processes 8 inference_ao_ddp.py --model m --data_path d")
    check_command("MODEL_PATH=m DRY_RUN=1 bash main_grpo_amazon.sh")
    with pytest.raises(AssertionError, match="does not accept --no_such_flag"):
        check_command("python preprocess_grpo.py --category Movies --no_such_flag 1")
    with pytest.raises(AssertionError, match="does not exist"):
        check_command("python scripts/no_such_script.py --x 1")
    with pytest.raises(AssertionError, match="does not read NO_SUCH_SETTING"):
        check_command("NO_SUCH_SETTING=1 bash main_grpo_amazon.sh")
    with pytest.raises(AssertionError, match="no make target"):
        check_command("make no-such-target")
    assert doc_commands(REPO / "README.md")  # the parser above read real blocks


def test_docstring_commands_are_read_whole(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text('r"""What it does.\n\n    python stage.py --model m \\\n        --limit 4   # a comment\n'
                      '    MODEL_PATH=m bash main_grpo_amazon.sh\n\npython is named in prose here too.\n"""\n')
    assert docstring_commands(script) == ["python stage.py --model m --limit 4",
                                          "MODEL_PATH=m bash main_grpo_amazon.sh"]
    with pytest.raises(AssertionError, match="does not accept --no_such_flag"):
        check_command(docstring_commands(script)[0].replace("stage.py", "inference_ao_ddp.py") + " --no_such_flag 1")
