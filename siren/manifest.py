"""Reading the run manifest beside a stage's input: is it the input this stage expects?

`siren.io.write_manifest` records a run (resolved args, package versions, git commit, input sizes,
counts, wall time); a stage writes it through `siren.outputs.StageOutputs.commit`.
`check_input_manifest` is the reading side: the manifest.json beside a stage's input says which
script made the input and with which settings, so a stage refuses an input of another kind, or one
made for another split or with settings that contradict what it was asked for, in one line and
before any work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from siren import SirenError
from siren.io import MANIFEST_NAME, read_manifest


def manifest_script(manifest: Mapping) -> str:
    """The script a manifest names, without its folder (older manifests wrote `scripts/x.py` or `x.py`)."""
    return Path(str(manifest.get("script") or "")).name


def _same_setting(key: str, recorded: Any, asked: Any) -> bool:
    if key == "split":
        from siren.data import canonical_split

        try:
            return canonical_split(str(recorded)) == canonical_split(str(asked))
        except SirenError:
            return False
    if isinstance(asked, bool) or isinstance(recorded, bool):
        return recorded is asked
    if isinstance(asked, int | float) and isinstance(recorded, int | float):
        return float(recorded) == float(asked)
    return str(recorded) == str(asked)


def check_input_manifest(path: str | os.PathLike, *, made_by: str | Iterable[str], flag: str,
                         expect: Mapping[str, tuple[Any, str]] | None = None) -> dict | None:
    """Check a stage input against the manifest.json beside it; returns the manifest (None: there is none).

    `path` is the input folder, or a file in it. Refused in one line: a manifest that none of the
    `made_by` scripts wrote (the input is of another kind), and any setting of `expect`, `{manifest
    arg: (the value this run asks for, the flag or reason that asks it)}`, recorded with another
    value (a split compares as a split: `val` is `valid`). A value of None asks nothing. An input
    without a manifest (an older run, a file made by hand) has nothing to compare and passes.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    where = folder / MANIFEST_NAME
    if not isinstance(manifest, dict):
        raise SirenError(f"{where}: expected a JSON object (the manifest of {flag} {path})")
    scripts = (made_by,) if isinstance(made_by, str) else tuple(made_by)
    script = manifest_script(manifest)
    if script and script not in scripts:
        raise SirenError(f"{flag} {path} was written by {script}, not {' or '.join(scripts)} ({where}): "
                         "it is not this stage's input")
    recorded_args = manifest.get("args") if isinstance(manifest.get("args"), dict) else {}
    for key, (asked, asked_by) in (expect or {}).items():
        if asked is None or key not in recorded_args or recorded_args[key] is None:
            continue
        if not _same_setting(key, recorded_args[key], asked):
            raise SirenError(f"{flag} {path} was made with {key} {recorded_args[key]!r} ({where}), but this run "
                             f"asks for {asked!r} ({asked_by})")
    return manifest
