"""Reading and writing the stages' files: one-line errors, atomic outputs, the run manifest.

Reading: `iter_text_lines`, `iter_jsonl`, `read_text` and `read_json` open plain or gzip (`.gz`)
files and turn every way a file can be unreadable (missing, not UTF-8, a gzip stream that is
corrupt or truncated, a permission error) into a one-line `SirenError` naming the file and, where
known, the line.

Writing: every output file is first written to a temporary sibling and then renamed into place
(`atomic_path`), so an interrupted run (crash, full disk, Ctrl-C) never leaves a file that looks
finished.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from siren import SirenError

MANIFEST_NAME = "manifest.json"
_TRACKED_PACKAGES = (
    "torch", "transformers", "trl", "peft", "accelerate", "deepspeed", "verl", "vllm", "datasets",
    "sentence-transformers", "faiss-cpu", "scikit-learn", "numpy", "pandas", "pyarrow", "siren",
)


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (pyarrow and zlib messages can span several)."""
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


# --------------------------------------------------------------------------------------------
# Reading text, JSON Lines and JSON files (plain or .gz)
# --------------------------------------------------------------------------------------------


def _read_failure(path: Path, err: BaseException, after_line: int | None = None) -> SirenError:
    """The one-line SirenError for a file that could not be read (after `after_line` good lines)."""
    where = "" if after_line is None else (f" after line {after_line}" if after_line else " at its start")
    if isinstance(err, FileNotFoundError):
        return SirenError(f"missing file: {path}")
    if isinstance(err, IsADirectoryError):
        return SirenError(f"{path} is a folder, not a file")
    if isinstance(err, gzip.BadGzipFile) and "Not a gzipped file" in str(err):
        return SirenError(f"{path}: not a gzip file, although its name ends in .gz")
    if isinstance(err, (gzip.BadGzipFile, zlib.error)):
        return SirenError(f"{path}: corrupt gzip data{where} ({_one_line(err)})")
    if isinstance(err, EOFError):
        return SirenError(f"{path}: truncated gzip file, the stream ends{where}")
    return SirenError(f"{path}: cannot read ({_one_line(err)})")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _not_utf8(path: Path, lineno: int, byte: int, column: int) -> SirenError:
    return SirenError(f"{path}:{lineno}: not UTF-8 text (byte 0x{byte:02x} at column {column}); the file must be UTF-8")


def iter_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (line_number, line) of a UTF-8 text file, decompressing `.gz`; lines keep their newline.

    Lines are split on b"\\n" and decoded one by one, so an undecodable byte is reported with its
    line. Every failure is a one-line SirenError naming the file: missing, a folder, not UTF-8,
    not gzip, a corrupt (zlib.error, CRC) or truncated (EOFError) gzip stream, a read error.
    """
    path = Path(path)
    lineno = 0
    try:
        with _open_binary(path) as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise _not_utf8(path, lineno, raw[err.start], err.start + 1) from None
                yield lineno, line
    except (OSError, EOFError, zlib.error) as err:
        raise _read_failure(path, err, after_line=lineno if path.suffix == ".gz" else None) from None


def parse_jsonl_line(path: str | os.PathLike, lineno: int, line: str) -> dict:
    """One JSON Lines record: a JSON object, else a SirenError naming `path:lineno`."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise SirenError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:  # an integer over 4300 digits; nesting too deep
        raise SirenError(f"{path}:{lineno}: not usable JSON ({_one_line(err)})") from None
    if not isinstance(record, dict):
        raise SirenError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) of a .jsonl or .jsonl.gz file; blank lines are skipped."""
    for lineno, line in iter_text_lines(path):
        if line.strip():
            yield lineno, parse_jsonl_line(path, lineno, line)


def read_text(path: str | os.PathLike) -> str:
    """A whole UTF-8 text file (`.gz` decompressed); one-line SirenError when it cannot be read."""
    path = Path(path)
    try:
        with _open_binary(path) as handle:
            raw = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise _read_failure(path, err) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        lineno = raw.count(b"\n", 0, err.start) + 1
        column = err.start - raw.rfind(b"\n", 0, err.start)
        raise _not_utf8(path, lineno, raw[err.start], column) from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in `path`; one-line SirenError (file, line) when it is unreadable or not JSON."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SirenError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except (ValueError, RecursionError) as err:
        raise SirenError(f"{path}: not usable JSON ({_one_line(err)})") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it onto `path`, else delete it.

    Works for anything that writes to a path (torch.save, np.savez, DataFrame.to_parquet, a
    directory written by `save_to_disk`).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers create it themselves (some, like save_to_disk, want a fresh path)
    try:
        yield tmp
        if not tmp.exists():
            raise SirenError(f"internal error: nothing was written for {target}")
        if target.is_dir() and not target.is_symlink():
            import shutil

            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink()


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


def check_outputs_free(paths: Iterable[str | os.PathLike], overwrite: bool) -> None:
    """Refuse to replace finished outputs unless --overwrite was given."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise SirenError(f"output already exists: {', '.join(existing)} (pass --overwrite to replace it)")


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
