"""Every command in the README's code blocks names scripts, flags and make targets that exist."""

import re
import subprocess
import sys
from functools import cache
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


@cache
def script_flags(script: Path) -> frozenset[str]:
    """Every option string a script accepts, aliases included, as its --help lists them (the flags
    may come from the shared helpers in siren/cli.py, so the script's source does not spell them)."""
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{script.name} --help failed: {proc.stderr[-500:]}"
    invocations = re.findall(r"^ {2}(-[^ ].*?)(?: {2,}|$)", proc.stdout, flags=re.M)  # the option column only
    return frozenset(flag for line in invocations for flag in re.findall(r"(?<![\w-])(--[\w-]+)", line))


def test_every_script_and_flag_in_the_readme_exists():
    checked = 0
    for command in readme_commands():
        for match in SCRIPT.finditer(command):
            script = REPO / match.group(1)
            assert script.is_file(), f"README names {match.group(1)}, which does not exist: {command}"
            if script.suffix != ".py":
                continue
            rest = command[match.end():]
            for flag in re.findall(r"(?<![\w-])(--[\w-]+)", rest):
                assert flag in script_flags(script), f"README passes {flag} to {match.group(1)}, which does not define it"
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
