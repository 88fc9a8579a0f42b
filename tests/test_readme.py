"""Every command in the README's code blocks names scripts, flags and make targets that exist."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = re.compile(r"(?<![\w/.-])((?:scripts/)?[\w-]+\.(?:py|sh))\b")


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                commands.append(line)
    return commands


def test_readme_has_commands():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"]
    assert len(commands) > 15


def test_every_script_and_flag_in_the_readme_exists():
    checked = 0
    for command in readme_commands():
        for match in SCRIPT.finditer(command):
            script = REPO / match.group(1)
            assert script.is_file(), f"README names {match.group(1)}, which does not exist: {command}"
            if script.suffix != ".py":
                continue
            source = script.read_text()
            rest = command[match.end():]
            for flag in re.findall(r"(?<![\w-])(--[\w-]+)", rest):
                assert f'"{flag}"' in source, f"README passes {flag} to {match.group(1)}, which does not define it"
                checked += 1
    assert checked > 30


def test_readme_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    for command in readme_commands():
        if command.startswith("make "):
            assert command.split()[1] in targets, command
    for target in ("demo", "test", "lint", "install"):
        assert target in targets
