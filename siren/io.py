"""Atomic file output and the run manifest every stage writes next to its outputs.

Every output file is first written to a temporary sibling and then renamed into place, so an
interrupted run (crash, full disk, Ctrl-C) never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
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
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SirenError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
