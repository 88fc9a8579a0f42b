"""Reading and writing the stages' files: one-line errors, atomic outputs, the run manifest.

Reading: `iter_text_lines`, `iter_jsonl`, `read_text` and `read_json` live in siren.reading and
are re-exported here: every way a file can be unreadable is a one-line `SirenError` naming the
file and, where known, the line. Whether an input's manifest fits the stage: siren.manifest.

Writing: every output file is first written to a temporary sibling and then renamed into place
(`atomic_path`), so an interrupted run (crash, full disk, Ctrl-C) never leaves a file that looks
finished. A stage with several outputs stages them all in one hidden folder and moves them into
place together (`atomic_outputs`), so they appear together or not at all. `check_output_folder`
refuses an unusable output folder, or finished outputs without --overwrite, before any work;
`check_output_clear_of_inputs` refuses an output folder where the stage's own inputs are. A stage
uses all of them through `siren.outputs.StageOutputs`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from siren import SirenError
from siren.reading import (  # noqa: F401 - the reading side, re-exported: `from siren.io import read_json` etc.
    RecordCheck,
    dangling_link,
    iter_jsonl,
    iter_jsonl_lines,
    iter_text_lines,
    missing_file_message,
    parse_jsonl_line,
    read_json,
    read_text,
)
from siren.reading import one_line as _one_line

MANIFEST_NAME = "manifest.json"
_TRACKED_PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "verl", "vllm", "datasets",
    "sentence-transformers", "faiss-cpu", "scikit-learn", "numpy", "pandas", "pyarrow", "siren",
)


# Errors a writer meets when the disk, quota or file system refuses: reported as one line.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def is_disk_full(err: OSError) -> bool:
    """Did a write fail because the disk, quota or file system refused it (a one-line error, not a bug)?"""
    return err.errno in _DISK_FULL_ERRNOS


# --------------------------------------------------------------------------------------------
# Output folders: checked before any work
# --------------------------------------------------------------------------------------------


def check_output_folder(folder: str | os.PathLike, names: Iterable[str] = (), overwrite: bool = False) -> Path:
    """Check, changing nothing on disk, that `folder` is or can become a folder we can write into,
    and that none of the outputs `names` (entries directly in it) exists, unless `overwrite`.

    Refuses (one-line SirenError) an existing file at `folder` or at any parent, a dangling link,
    a folder we cannot create a file in, and finished outputs ("pass --overwrite"). The write test
    is an actual write, not os.access: a temporary file in the deepest existing folder, removed at
    once (the folders that do not exist yet are not created). Root writes into folders whatever
    their permission bits, so for root (as in CI) only a file in the way or a read-only file system
    fails here; tests of this use a parent that is a file. Returns `folder` as a Path.
    """
    path = Path(folder)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    dangling = dangling_link(existing)
    if dangling:
        # lexists() sees the link, is_dir() follows it to nothing: neither a file nor a folder.
        raise SirenError(f"cannot use output folder {path}: {dangling}")
    if not existing.is_dir():
        if existing == path:
            raise SirenError(f"output folder {path} is an existing file, not a folder")
        raise SirenError(f"cannot create output folder {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".siren-write-check-", dir=existing)
    except OSError as err:
        raise SirenError(f"cannot write output folder {path}: {existing} is not writable ({_one_line(err)})") from None
    os.close(fd)
    os.unlink(probe)
    finished = [str(path / name) for name in names if os.path.lexists(path / name)]
    if finished and not overwrite:
        raise SirenError(f"output already exists: {', '.join(finished)} (pass --overwrite to replace it)")
    return path


def check_output_clear_of_inputs(output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | None],
                                 flag: str = "--output_dir") -> Path:
    """Refuse an output folder that would mix a stage's outputs with its own inputs.

    The output folder may not be an input, hold an input file directly, hold an input anywhere
    below it, or lie inside an input folder: an `--overwrite` there could replace or change what
    the stage reads (`slice_data.py --data_root X --output_root X` once replaced the source data).
    A folder beside the inputs' folder, or below it (data/Movies/verl/... next to
    data/Movies/train.jsonl.gz), is fine. Paths are compared after resolving symlinks; `inputs`
    are files or folders (None entries are skipped). Returns `output_dir` as a Path.
    """
    output_dir = Path(output_dir)
    out = output_dir.resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if source.is_dir():
            clash = out == source or out in source.parents or source in out.parents
        else:
            clash = out == source or out in source.parents
        if clash:
            where = ("is" if out == source else "holds" if out == source.parent
                     else "lies above" if out in source.parents else "lies inside")
            raise SirenError(f"output folder {output_dir} ({flag}) {where} this stage's input {given}; a stage "
                             "never writes where its own inputs are (it could replace them): choose another folder")
    return output_dir


def make_folders(path: Path) -> list[Path]:
    """mkdir -p `path`; returns the folders it created, deepest last; one-line error on failure."""
    missing = []
    current = path
    while not os.path.lexists(current) and current != current.parent:
        missing.append(current)
        current = current.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        check_output_folder(path)  # names the file in the way, if that is the cause
        raise SirenError(f"cannot create folder {path} ({_one_line(err)})") from None
    return missing[::-1]


def _remove_empty_dirs(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, else delete it.

    Works for anything that writes to a path (torch.save, np.savez, DataFrame.to_parquet, a
    directory written by `save_to_disk`). A full disk or read-only file system while writing is a
    one-line SirenError.
    """
    target = Path(path)
    make_folders(target.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers create it themselves (some, like save_to_disk, want a fresh path)
    try:
        yield tmp
        if not tmp.exists():
            raise SirenError(f"internal error: nothing was written for {target}")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except OSError as err:
        if err.errno in _DISK_FULL_ERRNOS:
            raise SirenError(f"cannot write {target}: {_one_line(err)}; nothing was kept") from None
        raise
    finally:
        if tmp.exists():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


class OutputGroup:
    """The outputs of one `atomic_outputs` block: write each to `path(name)` (or into `dir`)."""

    def __init__(self, out_dir: Path, staging: Path, names: tuple[str, ...]) -> None:
        self.out_dir = out_dir
        self.dir = staging
        self.names = names

    def path(self, name: str) -> Path:
        """Where to write output `name` (a file or folder directly inside the output folder)."""
        check_output_name(name)
        return self.dir / name

    def final_path(self, name: str) -> Path:
        """Where output `name` will be once the block has succeeded (for messages and manifests)."""
        check_output_name(name)
        return self.out_dir / name


def check_output_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise SirenError(f"internal error: output name {name!r} must be one file or folder name")


@contextlib.contextmanager
def atomic_outputs(
    out_dir: str | os.PathLike, names: Iterable[str] = (), *, overwrite: bool = False
) -> Iterator[OutputGroup]:
    """Write several outputs of a stage so that they appear together or not at all.

        with atomic_outputs(out_dir, ["train.parquet", "val.parquet", "manifest.json"],
                            overwrite=args.overwrite) as staged:
            frame.to_parquet(staged.path("train.parquet"))
            ...
            write_manifest(staged.dir, ...)

    On entry (before the block's work) the output folder is checked (`check_output_folder`): the
    named outputs must not exist unless `overwrite`. The block writes into a hidden staging folder
    `.<out_dir name>.staging-*` beside `out_dir`. When the block ends without an exception, every
    name must have been written; then every entry of the staging folder is moved into `out_dir`
    (a new `out_dir` is the staging folder renamed, in one step; into an existing one each entry
    is renamed in turn, the old versions set aside first and put back if a rename fails). Other
    files already in `out_dir` are never touched. When the block fails, the staging folder and
    any parent folders this call created are removed: nothing is left behind. A run killed with
    SIGKILL can leave a `.<name>.staging-*` folder (`leftover_scratch`); the next run of the stage
    removes it (`siren.outputs.StageOutputs.claimed`).
    """
    out_dir = Path(out_dir)
    names = tuple(names)
    for name in names:
        check_output_name(name)
    check_output_folder(out_dir, names, overwrite)
    created = make_folders(out_dir.parent)
    committed = False
    staging = _new_hidden_dir(out_dir.parent, f".{out_dir.name}{_STAGING}")
    try:
        yield OutputGroup(out_dir, staging, names)
        missing = [name for name in names if not os.path.lexists(staging / name)]
        if missing:
            raise SirenError(f"internal error: {out_dir}: the stage did not write {', '.join(missing)}")
        _move_into_place(staging, out_dir, overwrite)
        committed = True
    except OSError as err:
        if err.errno in _DISK_FULL_ERRNOS:
            raise SirenError(f"cannot write the outputs in {out_dir}: {_one_line(err)}; nothing was kept") from None
        raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if not committed:
            _remove_empty_dirs(created)


# The hidden names written beside an output `<name>` while it is written: atomic_outputs' staging
# folder (`.<name>.staging-<8 hex>`), the old versions it sets aside (`.<name>.replaced-<mkdtemp's
# 8 characters>`) and atomic_path's temporary (`.<name>.<8 characters>.tmp`).
_STAGING, _REPLACED = ".staging-", ".replaced-"


def leftover_scratch(target: str | os.PathLike) -> list[Path]:
    """The hidden staging folders and temporaries of `target` (an output folder or file) beside it.

    Only a run writing `target` makes them, and removes them when it ends, so those found while
    no run writes `target` (its lock is free: siren.outputs) were left by a killed run.
    """
    target = Path(target)
    if not target.parent.is_dir():
        return []
    name = re.escape(target.name)
    pattern = re.compile(rf"\.{name}(\.staging-[0-9a-f]{{8}}|\.replaced-[a-z0-9_]{{8}}|\.[a-z0-9_]{{8}}\.tmp)")
    return sorted(p for p in target.parent.iterdir() if pattern.fullmatch(p.name))


def _new_hidden_dir(parent: Path, prefix: str) -> Path:
    """A new folder with a unique name; unlike mkdtemp's (mode 0700) its mode follows the umask,
    because a staging folder can become the output folder itself."""
    while True:
        folder = parent / f"{prefix}{uuid.uuid4().hex[:8]}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def _move_into_place(staging: Path, out_dir: Path, overwrite: bool) -> None:
    if not os.path.lexists(out_dir):
        try:
            os.rename(staging, out_dir)  # one step: the whole folder appears at once
            return
        except OSError:
            pass  # created meanwhile by someone else: move entry by entry below
    # manifest.json last: a move cut short never shows a new manifest beside old outputs.
    entries = sorted((p.name for p in staging.iterdir()), key=lambda name: (name == MANIFEST_NAME, name))
    clashes = [str(out_dir / name) for name in entries if os.path.lexists(out_dir / name)]
    if clashes and not overwrite:
        raise SirenError(f"output already exists: {', '.join(clashes)} (pass --overwrite to replace it)")
    replaced = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}{_REPLACED}", dir=out_dir.parent))
    moved_old: list[str] = []
    moved_new: list[str] = []
    try:
        for name in entries:
            if os.path.lexists(out_dir / name):
                os.rename(out_dir / name, replaced / name)
                moved_old.append(name)
            os.rename(staging / name, out_dir / name)
            moved_new.append(name)
    except OSError as err:
        for name in moved_new:  # put everything back as it was
            with contextlib.suppress(OSError):
                os.rename(out_dir / name, staging / name)
        for name in moved_old:
            with contextlib.suppress(OSError):
                os.rename(replaced / name, out_dir / name)
        raise SirenError(f"could not move the outputs into {out_dir} ({_one_line(err)}); nothing was changed") from None
    finally:
        shutil.rmtree(replaced, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5,
    ).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def file_sizes(paths: Iterable[str | os.PathLike]) -> dict[str, int | None]:
    sizes: dict[str, int | None] = {}
    for p in paths:
        path = Path(p)
        if path.is_dir():
            sizes[str(path)] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        elif path.exists():
            sizes[str(path)] = path.stat().st_size
        else:
            sizes[str(path)] = None
    return sizes


class RunTimer:
    """Wall clock of a stage, started when the script starts."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)


def write_manifest(
    out_dir: str | os.PathLike,
    *,
    script: str,
    args: Any,
    inputs: Iterable[str | os.PathLike] = (),
    outputs: Iterable[str | os.PathLike] = (),
    counts: dict | None = None,
    seconds: float | None = None,
    extra: dict | None = None,
    name: str = MANIFEST_NAME,
) -> Path:
    """Write `manifest.json`: resolved args, versions, commit, input sizes, counts, wall time."""
    arg_dict = vars(args) if hasattr(args, "__dict__") else dict(args)
    manifest = {
        "script": script,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in arg_dict.items()},
        "git_commit": git_commit(),
        "versions": package_versions(),
        "inputs": file_sizes(inputs),
        "outputs": [str(p) for p in outputs],
        "counts": counts or {},
        "seconds": seconds,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        manifest.update(extra)
    return atomic_write_json(Path(out_dir) / name, manifest)


def read_manifest(directory: str | os.PathLike, name: str = MANIFEST_NAME) -> dict | None:
    path = Path(directory) / name
    if not path.exists():
        return None
    return read_json(path)
