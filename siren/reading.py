"""Reading the stages' input files: every way a file can be unreadable becomes one line.

`iter_text_lines`, `iter_jsonl`, `read_text` and `read_json` open plain or gzip (`.gz`) files and
turn every way a file can be unreadable (missing or a dangling symlink, not UTF-8, a gzip stream
that is corrupt, truncated or followed by other bytes, a permission error, JSON that is not text)
into a one-line `SirenError` naming the file and, where known, the line. `iter_jsonl(path, check)`
runs a record check inside the reader, so a bad record that gzip damage produced is reported as
that damage. siren.io re-exports these names; siren.data builds the record checks on them.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from siren import SirenError


def one_line(err: BaseException) -> str:
    """An exception's message on one line (pyarrow and zlib messages can span several)."""
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


def dangling_link(path: Path) -> str | None:
    """"<path> is a symlink to <target>, which does not exist" for a dangling symlink, else None."""
    if path.is_symlink() and not path.exists():
        return f"{path} is a symlink to {os.readlink(path)}, which does not exist"
    return None


def missing_file_message(path: str | os.PathLike, what: str = "file") -> str:
    """"missing <what>: <path>", or what is wrong instead: a dangling symlink, a folder."""
    path = Path(path)
    dangling = dangling_link(path)
    if dangling:
        return f"{what} {dangling}"
    if path.is_dir():
        return f"{what} {path} is a folder, not a file"
    return f"missing {what}: {path}"


def _has_gzip_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _read_failure(path: Path, err: BaseException, after_line: int | None = None) -> SirenError:
    """The one-line SirenError for a file that could not be read (after `after_line` good lines)."""
    where = "" if after_line is None else (f" after line {after_line}" if after_line else " at its start")
    if isinstance(err, FileNotFoundError):
        return SirenError(missing_file_message(path))
    if isinstance(err, IsADirectoryError):
        return SirenError(f"{path} is a folder, not a file")
    if isinstance(err, gzip.BadGzipFile) and "Not a gzipped file" in str(err):
        if _has_gzip_magic(path):
            # gzip reads a new member after each one: these bytes follow valid gzip data. `gzip -d`
            # ignores them with a warning; they are refused here, because appended or damaged bytes
            # can hide rows that should have been there.
            return SirenError(f"{path}: bytes that are not gzip follow the gzip data{where} (trailing garbage: "
                              "the file was appended to or damaged); get the file again")
        return SirenError(f"{path}: not a gzip file, although its name ends in .gz")
    if isinstance(err, (gzip.BadGzipFile, zlib.error)):
        return SirenError(f"{path}: corrupt gzip data{where} ({one_line(err)})")
    if isinstance(err, EOFError):
        return SirenError(f"{path}: truncated gzip file, the stream ends{where}")
    return SirenError(f"{path}: cannot read ({one_line(err)})")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _not_utf8(path: Path, lineno: int, byte: int, column: int) -> SirenError:
    return SirenError(f"{path}:{lineno}: not UTF-8 text (byte 0x{byte:02x} at column {column}); the file must be UTF-8")


def _stream_fault(path: Path, handle, lineno: int) -> SirenError | None:
    """Read a gzip stream to its end: the corrupt-gzip error found there, or None if it is sound.

    gzip checks a member's CRC only at its end, so damaged bytes near the end are decoded, handed
    out as lines, and fail as bad records first. Called when a line of a .gz file failed, so that
    the error names the damage, not its symptom."""
    lines_read = lineno
    try:
        while chunk := handle.read(1 << 20):
            lines_read += chunk.count(b"\n")
    except (OSError, EOFError, zlib.error) as err:
        return _read_failure(path, err, after_line=lines_read)
    return None


def _read_lines(path: Path, parse: Callable[[int, str], Any] | None) -> Iterator[tuple[int, str, Any]]:
    """(line_number, line, parse(line_number, line)) of a text file; `parse` None yields every line
    with None, else blank lines are skipped. See `iter_text_lines` for the errors."""
    lineno = 0
    try:
        with _open_binary(path) as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError as err:
                        raise _not_utf8(path, lineno, raw[err.start], err.start + 1) from None
                    value = None
                    if parse is not None:
                        if not line.strip():
                            continue
                        value = parse(lineno, line)
                except SirenError as err:
                    fault = _stream_fault(path, handle, lineno) if path.suffix == ".gz" else None
                    if fault is None:
                        raise
                    raise SirenError(f"{fault}; the damaged data already failed at line {lineno}: "
                                     f"{str(err).removeprefix(f'{path}:{lineno}: ')}") from None
                yield lineno, line, value
    except (OSError, EOFError, zlib.error) as err:
        raise _read_failure(path, err, after_line=lineno if path.suffix == ".gz" else None) from None


def iter_text_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Yield (line_number, line) of a UTF-8 text file, decompressing `.gz`; lines keep their newline.

    Lines are split on b"\\n" and decoded one by one, so an undecodable byte is reported with its
    line. Every failure is a one-line SirenError naming the file: missing (or a dangling symlink),
    a folder, not UTF-8, not gzip, gzip data followed by other bytes, a corrupt (zlib.error, CRC)
    or truncated (EOFError) gzip stream, a read error.
    """
    for lineno, line, _ in _read_lines(Path(path), None):
        yield lineno, line


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _unpaired_surrogate(value: Any, where: str = "") -> str | None:
    """Where in a decoded JSON value a string holds an unpaired surrogate ("field target"), else None.

    json.loads turns an escaped pair (an emoji written as \\ud83c\\udfac) into one character, so
    any surrogate left is unpaired: not Unicode text, and every UTF-8 writer downstream fails on it.
    """
    if isinstance(value, str):
        if not _SURROGATE.search(value):
            return None
        return f"field {where}" if where else "a string"
    if isinstance(value, dict):
        children = [(f"{where}.{key}" if where else key, key, item) for key, item in value.items()]
    elif isinstance(value, list):
        children = [(f"{where}[{i}]", "", item) for i, item in enumerate(value)]
    else:
        return None
    for child, key, item in children:
        if _SURROGATE.search(key):
            return f"a field name in {where or 'the record'}"
        found = _unpaired_surrogate(item, child)
        if found:
            return found
    return None


def _loads(text: str) -> Any:
    """json.loads that refuses an escaped unpaired surrogate (ValueError, as json's own errors)."""
    value = json.loads(text)
    if _SURROGATE_ESCAPE.search(text):
        where = _unpaired_surrogate(value)
        if where:
            raise ValueError(f"{where} holds an unpaired surrogate escape such as \\ud800, which is not text")
    return value


def parse_jsonl_line(path: str | os.PathLike, lineno: int, line: str) -> dict:
    """One JSON Lines record: a JSON object, else a SirenError naming `path:lineno`."""
    try:
        record = _loads(line)
    except json.JSONDecodeError as err:
        raise SirenError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
    except (ValueError, RecursionError) as err:  # an integer over 4300 digits; nesting too deep; a lone surrogate
        raise SirenError(f"{path}:{lineno}: not usable JSON ({one_line(err)})") from None
    if not isinstance(record, dict):
        raise SirenError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
    return record


RecordCheck = Callable[[dict, Path, int], Any]


def iter_jsonl_lines(path: str | os.PathLike, check: RecordCheck | None = None) -> Iterator[tuple[int, str, Any]]:
    """Yield (line_number, line, record) of a .jsonl or .jsonl.gz file; blank lines are skipped.

    `check(record, path, line_number)` validates a record (and returns it, maybe converted); its
    SirenError on a .gz file is reported as the gzip damage that caused it when the rest of the
    stream turns out corrupt (a CRC failure is only found at the end of the stream).
    """
    path = Path(path)

    def parse(lineno: int, line: str) -> Any:
        record = parse_jsonl_line(path, lineno, line)
        return record if check is None else check(record, path, lineno)

    yield from _read_lines(path, parse)


def iter_jsonl(path: str | os.PathLike, check: RecordCheck | None = None) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, record) of a .jsonl or .jsonl.gz file; blank lines are skipped.

    `check` as in `iter_jsonl_lines`.
    """
    for lineno, _, record in iter_jsonl_lines(path, check):
        yield lineno, record


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
        return _loads(text)
    except json.JSONDecodeError as err:
        raise SirenError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except (ValueError, RecursionError) as err:
        raise SirenError(f"{path}: not usable JSON ({one_line(err)})") from None
