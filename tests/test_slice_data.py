"""scripts/slice_data.py: a byte-for-byte slice, and bad sources give one line and leave nothing behind."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from conftest import assert_refused, run_in_process

USERS = ("u1", "u2", "u3")


def _split_row(user: str, item: str, label: float = 4.0) -> dict:
    return {"user_id": user, "parent_asin": item, "timestamp": 1, "label": label, "target": "T, C",
            "history": "A, B, 3.0"}


def _history_row(user: str) -> dict:
    return {"user_id": user, "history": "A, B, 3", "history_asins": ["a0"], "history_ratings": [3]}


def _write(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines(keepends=True)


@pytest.fixture
def data_root(tmp_path) -> Path:
    category = tmp_path / "data" / "Films"
    category.mkdir(parents=True)
    _write(category / "history.jsonl.gz", [_history_row(u) for u in USERS])
    for split in ("train", "valid", "test"):
        _write(category / f"{split}.jsonl.gz",
               [_split_row(u, f"{split}-{u}-{i}", 1.0 + i) for i in range(3) for u in USERS])
    return tmp_path / "data"


def _slice(data_root: Path, out_root: Path, *extra: str):
    return run_in_process("scripts/slice_data.py", "--data_root", str(data_root), "--category", "Films",
                      "--num_users", "2", "--output_root", str(out_root), *extra, check=False)


def test_slice_keeps_the_first_users_byte_for_byte(data_root, tmp_path):
    out_root = tmp_path / "slice"
    proc = _slice(data_root, out_root)
    assert proc.returncode == 0, proc.stderr
    assert "to 2 users" in proc.stdout and "train 6 rows" in proc.stdout
    target = out_root / "Films"
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [*(f"{name}.jsonl.gz" for name in ("history", "train", "valid", "test")), "manifest.json"])
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["script"] == "scripts/slice_data.py" and manifest["counts"]["users"] == 2
    for name in ("history", "train", "valid", "test"):
        source = _lines(data_root / "Films" / f"{name}.jsonl.gz")
        kept = [line for line in source if json.loads(line)["user_id"] in ("u1", "u2")]
        assert _lines(target / f"{name}.jsonl.gz") == kept
    assert [p.name for p in out_root.iterdir()] == ["Films"]  # no staging folder left

    again = _slice(data_root, out_root)
    assert_refused(again, "--overwrite")
    (target / "notes.txt").write_text("mine")
    assert _slice(data_root, out_root, "--overwrite").returncode == 0
    assert (target / "notes.txt").read_text() == "mine"  # --overwrite replaces the four slice files only


def _drop_valid(category: Path) -> None:
    (category / "valid.jsonl.gz").unlink()


def _truncate_test(category: Path) -> None:
    rows = [_split_row("u1", f"item-{i}", 1.0 + i % 5) | {"history": "x" * (i % 89)} for i in range(3000)]
    _write(category / "test.jsonl.gz", rows)
    data = (category / "test.jsonl.gz").read_bytes()
    (category / "test.jsonl.gz").write_bytes(data[: len(data) // 2])


def _corrupt_train(category: Path) -> None:
    good = gzip.compress(b"".join(json.dumps(_split_row(u, "x")).encode() + b"\n" for u in USERS), mtime=0)
    broken = bytearray(gzip.compress(json.dumps(_split_row("u1", "y")).encode() + b"\n", mtime=0))
    broken[10] = 0xFF  # reserved deflate block type: zlib.error
    (category / "train.jsonl.gz").write_bytes(good + bytes(broken))


def _latin1_valid(category: Path) -> None:
    row = json.dumps(_split_row("u2", "x") | {"target": "Am\u00e9lie, Drama"}, ensure_ascii=False)
    (category / "valid.jsonl.gz").write_bytes(gzip.compress(row.encode("latin-1") + b"\n"))


def _integer_user_in_test(category: Path) -> None:
    _write(category / "test.jsonl.gz", [_split_row("u1", "a"), _split_row(7, "b")])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_valid, r"missing valid file: .*Films/valid\.jsonl\.gz"),
        (_truncate_test, r"Films/test\.jsonl\.gz: truncated gzip file, the stream ends after line \d+"),
        (_corrupt_train, r"Films/train\.jsonl\.gz: corrupt gzip data after line 3 \(.*invalid block type\)"),
        (_latin1_valid, r"Films/valid\.jsonl\.gz:1: not UTF-8 text \(byte 0xe9"),
        (_integer_user_in_test, r"Films/test\.jsonl\.gz:2: user_id must be a non-empty string, got a number 7"),
    ],
    ids=["missing-split", "truncated", "corrupt-gzip", "not-utf8", "integer-user"],
)
def test_bad_source_gives_one_line_and_leaves_nothing(data_root, tmp_path, damage, message):
    damage(data_root / "Films")
    out_root = tmp_path / "results" / "demo"
    proc = _slice(data_root, out_root)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "results").exists()  # not even the parent folders


def test_out_root_that_is_a_file(data_root, tmp_path):
    (tmp_path / "slice").write_text("not a folder")
    proc = _slice(data_root, tmp_path / "slice")
    assert_refused(proc, only_line=True)
    assert "slice is a file, not a folder" in proc.stderr
    assert (tmp_path / "slice").read_text() == "not a folder"


def test_the_old_out_root_flag_still_works(data_root, tmp_path):
    proc = run_in_process("scripts/slice_data.py", "--data_root", str(data_root), "--data_category", "Films",
                      "--num_users", "1", "--out_root", str(tmp_path / "old"), check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "old" / "Films").iterdir()) == sorted(
        [*(f"{name}.jsonl.gz" for name in ("history", "train", "valid", "test")), "manifest.json"])
    zero = _slice(data_root, tmp_path / "none", "--num_users", "0")
    assert_refused(zero, "--num_users: must be at least 1, got 0")
    assert not (tmp_path / "none").exists()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same-root", "symlinked-root", "root-above"])
def test_the_slice_never_replaces_its_source(data_root, tmp_path, where):
    """Issue 20: --data_root X --output_root X --overwrite replaced the source data with the slice, and the
    refusal without --overwrite suggested --overwrite."""
    if where == "symlinked-root":
        out_root = tmp_path / "link"
        out_root.symlink_to(data_root)
    elif where == "root-above":
        # the data root lies inside a folder named like the category: <out_root>/Films is above the sources
        (tmp_path / "Films").mkdir()
        data_root = data_root.rename(tmp_path / "Films" / "data")
        out_root = tmp_path
    else:
        out_root = data_root
    before = _tree(tmp_path)
    for extra in ((), ("--overwrite",)):
        proc = _slice(data_root, out_root, *extra)
        assert_refused(proc, only_line=True)
        assert re.search(r"error: output folder .*Films \(--output_root\) (holds|lies above) this stage's input",
                         proc.stderr), proc.stderr
        assert "--overwrite" not in proc.stderr
    assert _tree(tmp_path) == before


def test_a_category_that_is_a_path_is_refused(data_root, tmp_path):
    proc = run_in_process("scripts/slice_data.py", "--data_root", str(data_root), "--category", "../data/Films",
                      "--output_root", str(tmp_path / "out"), check=False)
    assert_refused(proc, "category '../data/Films' is not a name", only_line=True)
    assert not (tmp_path / "out").exists()
