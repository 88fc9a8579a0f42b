"""siren.data validation errors, siren.io atomic writes and manifests, scripts/get_data.sh."""

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, assert_refused, run_in_process

from siren import SirenError
from siren.data import (
    load_history,
    load_split,
    parse_history_line,
    resolve_category_dir,
    split_item_text,
)
from siren.io import (
    atomic_outputs,
    atomic_path,
    atomic_write_json,
    check_output_folder,
    iter_jsonl,
    iter_text_lines,
    read_json,
    read_manifest,
    read_text,
    write_manifest,
)

SPLIT_ROW = {"user_id": "u1", "parent_asin": "a1", "timestamp": 1, "label": 4.0, "target": "T, C", "history": "A, B, 3.0"}
HISTORY_ROW = {"user_id": "u1", "history": "A, B, 3", "history_asins": ["a0"], "history_ratings": [3]}


def write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def test_load_split_ok(tmp_path):
    rows = load_split(write_gz(tmp_path / "train.jsonl.gz", [json.dumps(SPLIT_ROW)]))
    assert rows[0]["label"] == 4.0


def test_missing_file_names_path_and_get_data(tmp_path):
    with pytest.raises(SirenError, match=r"train.jsonl.gz.*scripts/get_data.sh"):
        load_split(tmp_path / "train.jsonl.gz")


def test_bad_json_line_gives_file_and_line(tmp_path):
    path = write_gz(tmp_path / "train.jsonl.gz", [json.dumps(SPLIT_ROW), "{not json"])
    with pytest.raises(SirenError, match=r"train.jsonl.gz:2: not valid JSON"):
        load_split(path)


def test_missing_fields_are_named(tmp_path):
    row = {k: v for k, v in SPLIT_ROW.items() if k not in ("label", "target")}
    with pytest.raises(SirenError, match=r":1: missing field\(s\) label, target"):
        load_split(write_gz(tmp_path / "t.jsonl.gz", [json.dumps(row)]))


@pytest.mark.parametrize("label", [0, 6, "x", None])
def test_label_outside_range(tmp_path, label):
    with pytest.raises(SirenError, match="label"):
        load_split(write_gz(tmp_path / "t.jsonl.gz", [json.dumps({**SPLIT_ROW, "label": label})]))


def test_history_lists_of_unequal_length(tmp_path):
    row = {**HISTORY_ROW, "history_asins": ["a0", "a1"]}
    with pytest.raises(SirenError, match="history_asins has 2 items but history_ratings has 1"):
        load_history(write_gz(tmp_path / "history.jsonl.gz", [json.dumps(row)]))


def test_empty_split_and_history_are_errors(tmp_path):
    with pytest.raises(SirenError, match="empty"):
        load_split(write_gz(tmp_path / "e.jsonl.gz", [""]))
    with pytest.raises(SirenError, match="empty"):
        load_history(write_gz(tmp_path / "h.jsonl.gz", [""]))


def test_history_line_titles_with_commas():
    item = parse_history_line("Crouching Tiger, Hidden Dragon, Movies & TV|Drama, 4.0")
    assert item.title == "Crouching Tiger, Hidden Dragon"
    assert item.categories == "Movies & TV|Drama"
    assert item.rating == 4.0
    assert item.text == "Crouching Tiger, Hidden Dragon, Movies & TV|Drama"
    assert split_item_text("Dune, Part Two, Sci-Fi") == ("Dune, Part Two", "Sci-Fi")
    no_rating = parse_history_line("Solo Title, Cat")
    assert no_rating.rating is None and no_rating.title == "Solo Title"


def test_resolve_category_dir(tmp_path):
    (tmp_path / "Films").mkdir()
    write_gz(tmp_path / "Films" / "train.jsonl.gz", [json.dumps(SPLIT_ROW)])
    assert resolve_category_dir("Films", tmp_path) == tmp_path / "Films"
    with pytest.raises(SirenError, match=r"no data for category 'Nope'.*get_data.sh Nope"):
        resolve_category_dir("Nope", tmp_path)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("disk full")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    atomic_write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_atomic_path_replaces_directories(tmp_path):
    target = tmp_path / "ds"
    for value in ("one", "two"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "f.txt").write_text(value)
    assert (target / "f.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_overwrite_guard(tmp_path):
    (tmp_path / "done.json").write_text("{}")
    with pytest.raises(SirenError, match="--overwrite"):
        check_output_folder(tmp_path, ["done.json"], overwrite=False)
    assert check_output_folder(tmp_path, ["done.json"], overwrite=True) == tmp_path


def test_manifest_records_args_versions_inputs(tmp_path):
    (tmp_path / "in.txt").write_text("12345")
    write_manifest(tmp_path, script="x.py", args={"k": 20, "path": tmp_path}, inputs=[tmp_path / "in.txt"],
                   counts={"rows": 3}, seconds=1.5)
    manifest = read_manifest(tmp_path)
    assert manifest["args"] == {"k": 20, "path": str(tmp_path)}
    assert manifest["inputs"] == {str(tmp_path / "in.txt"): 5}
    assert manifest["counts"] == {"rows": 3} and manifest["seconds"] == 1.5
    assert "torch" in manifest["versions"] and "python" in manifest["versions"]


def _get_data(*args, env=None):
    return subprocess.run(["bash", str(REPO / "scripts" / "get_data.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.mark.real_data
def test_get_data_copies_and_verifies(movies_dir, tmp_path):
    dest = tmp_path / "data" / "Movies"
    proc = _get_data("Movies", "--from", str(movies_dir.parent), "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout
    for name in ("train.jsonl.gz", "valid.jsonl.gz", "test.jsonl.gz", "history.jsonl.gz", "SHA256SUMS"):
        assert (dest / name).exists()


@pytest.mark.real_data
def test_get_data_rejects_a_tampered_file(movies_dir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("train.jsonl.gz", "valid.jsonl.gz", "test.jsonl.gz", "history.jsonl.gz"):
        (src / name).write_bytes((movies_dir / name).read_bytes())
    write_gz(src / "test.jsonl.gz", [json.dumps(SPLIT_ROW)])
    dest = tmp_path / "dest"
    proc = _get_data("Movies", "--dest", str(dest), env={"SIREN_DATA_DIR": str(src)})
    assert proc.returncode != 0
    assert "checksum mismatch" in proc.stderr
    assert not dest.exists()


def test_get_data_unknown_source(tmp_path):
    proc = _get_data("Movies", "--from", str(tmp_path), "--dest", str(tmp_path / "d"))
    assert proc.returncode != 0 and "no Movies split files" in proc.stderr
    assert _get_data().returncode == 2


def test_run_main_exit_codes():
    from siren import SirenError
    from siren.cli import run_main

    def fails():
        raise SirenError("bad input")

    assert run_main(lambda: None) == 0
    assert run_main(fails) == 2


@pytest.mark.parametrize("outcome", ["ok", "refused"])
def test_run_main_closes_the_process_group(outcome):
    """A launched process leaves with its group shut down (one left open aborted at exit under load)."""
    import torch.distributed as dist

    from siren import SirenError
    from siren.cli import run_main

    def main():
        if outcome == "refused":
            raise SirenError("bad input")

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert run_main(main) == (0 if outcome == "ok" else 2)
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ---- field types (data/README.md), checked once in the loaders -----------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("label", True, r":1: label true is not a number \(it is a boolean\)"),
        ("label", "4", r':1: label "4" is not a number \(it is a string\)'),
        pytest.param("label", 10**400, r":1: label 1000.*\.\.\. is outside 1-5", id="label-huge-int"),
        ("user_id", None, r":1: user_id must be a non-empty string, got null"),
        ("user_id", 17, r":1: user_id must be a non-empty string, got a number 17"),
        ("user_id", "", r":1: user_id must be a non-empty string"),
        ("parent_asin", None, r":1: parent_asin must be a non-empty string, got null"),
        ("parent_asin", 42, r":1: parent_asin must be a non-empty string, got a number 42"),
        ("history", ["A, B, 3"], r":1: history must be a string, got a list"),
        ("target", None, r":1: target must be a string, got null"),
        ("timestamp", "1700000000", r":1: timestamp must be a finite number, got a string"),
        ("timestamp", False, r":1: timestamp must be a finite number, got a boolean"),
    ],
)
def test_split_field_types_are_checked(tmp_path, field, value, message):
    path = write_gz(tmp_path / "test.jsonl.gz", [json.dumps({**SPLIT_ROW, field: value})])
    with pytest.raises(SirenError, match=r"test\.jsonl\.gz" + message):
        load_split(path)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("user_id", 5, r"user_id must be a non-empty string"),
        ("history", None, r"history must be a string, got null"),
        ("history_asins", [3], r"history_asins\[0\] must be a non-empty string, got a number 3"),
        ("history_ratings", [True], r"history_ratings\[0\] true is not a number \(it is a boolean\)"),
        ("history_ratings", ["3"], r'history_ratings\[0\] "3" is not a number \(it is a string\)'),
    ],
)
def test_history_field_types_are_checked(tmp_path, field, value, message):
    path = write_gz(tmp_path / "history.jsonl.gz", [json.dumps({**HISTORY_ROW, field: value})])
    with pytest.raises(SirenError, match=r"history\.jsonl\.gz:1: " + message):
        load_history(path)


def test_valid_rows_keep_their_values(tmp_path):
    rows = load_split(write_gz(tmp_path / "t.jsonl.gz", [json.dumps({**SPLIT_ROW, "label": 5})]))
    assert rows[0]["label"] == 5.0 and isinstance(rows[0]["label"], float)
    history = load_history(write_gz(tmp_path / "h.jsonl.gz", [json.dumps(HISTORY_ROW)]))
    assert history[0]["history_ratings"] == [3.0]


def test_duplicate_split_rows_are_kept_and_reported(tmp_path, capsys):
    lines = [json.dumps(SPLIT_ROW), json.dumps({**SPLIT_ROW, "parent_asin": "a2"}),
             json.dumps({**SPLIT_ROW, "label": 2.0}), json.dumps(SPLIT_ROW)]
    path = write_gz(tmp_path / "train.jsonl.gz", lines)
    rows = load_split(path)
    assert len(rows) == 4  # every row stays: each has its own parquet index downstream
    assert rows.duplicates.count == 2
    assert rows.duplicates.example == ("u1", "a1") and rows.duplicates.lines == (1, 3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"warning: {path}: 2 row(s) repeat an earlier (user_id, parent_asin), "
                          "first ('u1', 'a1') at lines 1 and 3; all rows are kept")
    clean = load_split(write_gz(tmp_path / "valid.jsonl.gz", [json.dumps(SPLIT_ROW)]))
    assert clean.duplicates.count == 0 and capsys.readouterr().err == ""
    load_split(path, warn=False)
    assert capsys.readouterr().err == ""


def test_duplicate_history_users_are_refused(tmp_path):
    lines = [json.dumps(HISTORY_ROW), json.dumps({**HISTORY_ROW, "user_id": "u2"}),
             json.dumps({**HISTORY_ROW, "history_ratings": [5]}), json.dumps({**HISTORY_ROW, "user_id": "u2"})]
    with pytest.raises(SirenError, match=r"history\.jsonl\.gz: 2 row\(s\) repeat an earlier \(user_id\), "
                                         r"first 'u1' at lines 1 and 3; .*one row per user"):
        load_history(write_gz(tmp_path / "history.jsonl.gz", lines))


# ---- unreadable files: one line naming the file, in every reader ---------------------------


def _gzip_bytes(text: str) -> bytes:
    return gzip.compress(text.encode("utf-8"), mtime=0)


def corrupt_gzip(path: Path, good_lines: list[str]) -> Path:
    """`good_lines`, then a gzip member whose deflate stream is broken (zlib.error 'invalid block type')."""
    broken = bytearray(_gzip_bytes(json.dumps(SPLIT_ROW) + "\n"))
    broken[10] = 0xFF  # the first deflate block header: reserved block type 3
    path.write_bytes(_gzip_bytes("".join(line + "\n" for line in good_lines)) + bytes(broken))
    return path


def truncated_gzip(path: Path, n_lines: int = 2000) -> Path:
    rows = [json.dumps({**SPLIT_ROW, "parent_asin": f"a{i}", "history": "x" * (i % 97)}) for i in range(n_lines)]
    data = _gzip_bytes("".join(row + "\n" for row in rows))
    path.write_bytes(data[: len(data) // 2])
    return path


def test_non_utf8_line_is_named(tmp_path):
    bad = json.dumps({**SPLIT_ROW, "target": "Caf\u00e9"}, ensure_ascii=False).encode("latin-1")
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress(json.dumps(SPLIT_ROW).encode() + b"\n" + bad + b"\n"))
    with pytest.raises(SirenError, match=r"train\.jsonl\.gz:2: not UTF-8 text \(byte 0xe9 at column \d+\)"):
        load_split(path)
    plain = tmp_path / "results.jsonl"
    plain.write_bytes(b'{"a": 1}\n' + bad + b"\n")
    with pytest.raises(SirenError, match=r"results\.jsonl:2: not UTF-8"):
        list(iter_jsonl(plain))


def test_corrupt_and_truncated_gzip_give_one_line(tmp_path):
    path = corrupt_gzip(tmp_path / "train.jsonl.gz", [json.dumps(SPLIT_ROW)] * 2)
    with pytest.raises(SirenError, match=r"train\.jsonl\.gz: corrupt gzip data after line 2 \(.*invalid block type\)"):
        load_split(path)
    path = truncated_gzip(tmp_path / "valid.jsonl.gz")
    with pytest.raises(SirenError, match=r"valid\.jsonl\.gz: truncated gzip file, the stream ends after line \d+$"):
        load_split(path)
    path = tmp_path / "test.jsonl.gz"
    path.write_text(json.dumps(SPLIT_ROW) + "\n")
    with pytest.raises(SirenError, match=r"test\.jsonl\.gz: not a gzip file"):
        load_split(path)
    crc = bytearray(_gzip_bytes(json.dumps(SPLIT_ROW) + "\n"))
    crc[-8] ^= 1
    (tmp_path / "h.jsonl.gz").write_bytes(bytes(crc))
    with pytest.raises(SirenError, match=r"h\.jsonl\.gz: corrupt gzip data after line 1 \(CRC check failed"):
        list(iter_text_lines(tmp_path / "h.jsonl.gz"))


def test_read_text_and_read_json(tmp_path):
    (tmp_path / "ok.json").write_text('{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    (tmp_path / "latin.json").write_bytes(b'{"a": 1,\n "b": "caf\xe9"}')
    with pytest.raises(SirenError, match=r"latin\.json:2: not UTF-8 text \(byte 0xe9 at column 11\)"):
        read_json(tmp_path / "latin.json")
    (tmp_path / "broken.json").write_text('{"a": 1,\n')
    with pytest.raises(SirenError, match=r"broken\.json: not valid JSON \(.* at line 2\)"):
        read_json(tmp_path / "broken.json")
    with pytest.raises(SirenError, match=r"missing file: .*nope\.json"):
        read_text(tmp_path / "nope.json")
    with pytest.raises(SirenError, match=r"is a folder, not a file"):
        read_text(tmp_path)
    (tmp_path / "manifest.json").write_bytes(b'{"x": "\xff"}')
    with pytest.raises(SirenError, match=r"manifest\.json:1: not UTF-8"):
        read_manifest(tmp_path)


def test_other_readers_use_the_shared_helpers(tmp_path):
    """results.jsonl (stage 4b), --namer files (stage 1), make_tables inputs: one line, not a traceback."""
    from siren.cot_results import load_thinking
    from siren.tools.table_inputs import read_json_object_if_present as tables_read_json
    from siren.topic_names import names_from_file

    results = tmp_path / "results.jsonl"
    results.write_bytes(b'{"index": 0, "reasoning": "caf\xe9"}\n')
    with pytest.raises(SirenError, match=r"results\.jsonl:1: not UTF-8"):
        load_thinking(results)
    names = tmp_path / "names.json"
    names.write_bytes(b'["caf\xe9"]')
    with pytest.raises(SirenError, match=r"names\.json:1: not UTF-8"):
        names_from_file(names, 1)
    with pytest.raises(SirenError, match=r"names\.json:1: not UTF-8"):
        tables_read_json(names)


def test_load_split_rows_refuses_a_file_that_is_not_parquet(tmp_path):
    from siren.verl_data import load_split_rows

    (tmp_path / "train.parquet").write_text("user_id,label\nu1,4\n")
    with pytest.raises(SirenError, match=r"train\.parquet: not a readable parquet file \(Parquet magic bytes"):
        load_split_rows(tmp_path, "train")
    (tmp_path / "val.parquet").write_bytes(b"")
    with pytest.raises(SirenError, match=r"val\.parquet: not a readable parquet file \(Parquet file size is 0"):
        load_split_rows(tmp_path, "val")


# ---- output folders ------------------------------------------------------------------------


def test_output_dir_that_is_a_file_or_under_a_file(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(SirenError, match=r"output folder .*taken is an existing file, not a folder"):
        check_output_folder(a_file)
    # A parent that is a regular file cannot be written into, for root too (CI runs as root).
    with pytest.raises(SirenError, match=r"cannot create output folder .*taken/out/deeper: .*taken is a file"):
        check_output_folder(a_file / "out" / "deeper")
    with pytest.raises(SirenError, match=r"taken is an existing file, not a folder"):
        check_output_folder(a_file, ["train.parquet"], overwrite=True)
    assert a_file.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # the checks left nothing behind


def test_check_output_folder_changes_nothing(tmp_path):
    assert check_output_folder(tmp_path / "x" / "y", ["a.json"]) == tmp_path / "x" / "y"
    assert list(tmp_path.iterdir()) == []  # the write probe is removed, no folder is made


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into folders without write permission")
def test_output_dir_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(SirenError, match=r"cannot write output folder .*locked/out: .*locked is not writable"):
            check_output_folder(locked / "out", ["metrics.json"], overwrite=False)
    finally:
        locked.chmod(0o700)


def test_atomic_path_reports_a_full_disk_in_one_line(tmp_path):
    import errno

    with pytest.raises(SirenError, match=r"cannot write .*out\.json: No space left on device; nothing was kept"):
        with atomic_path(tmp_path / "out.json") as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


# ---- several outputs: all or nothing -------------------------------------------------------

NAMES = ["train.parquet", "val.parquet", "test.parquet", "manifest.json"]


def test_atomic_outputs_leave_nothing_when_the_block_fails(tmp_path):
    out = tmp_path / "results" / "verl" / "max@10-long@False"
    with pytest.raises(SirenError, match="integer user_id"):
        with atomic_outputs(out, NAMES) as staged:
            staged.path("train.parquet").write_text("train")
            staged.path("val.parquet").write_text("val")
            raise SirenError("test.jsonl.gz:3: integer user_id")
    assert list(tmp_path.iterdir()) == []  # no outputs, no staging folder, no parents it made

    with atomic_outputs(out, NAMES) as staged:  # the rerun is not refused as "already exists"
        for name in NAMES:
            staged.path(name).write_text(name)
        assert not out.exists()  # nothing visible until the block ends
    assert sorted(p.name for p in out.iterdir()) == sorted(NAMES)
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_atomic_outputs_refuse_missing_outputs_and_finished_ones(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(SirenError, match=r"did not write val\.parquet"):
        with atomic_outputs(out, ["train.parquet", "val.parquet"]) as staged:
            staged.path("train.parquet").write_text("t")
    assert list(tmp_path.iterdir()) == []
    out.mkdir()
    (out / "train.parquet").write_text("old")
    with pytest.raises(SirenError, match=r"output already exists: .*train\.parquet \(pass --overwrite"):
        with atomic_outputs(out, ["train.parquet"]):
            raise AssertionError("the block must not run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SirenError, match=r"is an existing file, not a folder"):
        with atomic_outputs(tmp_path / "file", ["a"]):
            raise AssertionError("the block must not run")
    with pytest.raises(SirenError, match="one file or folder name"):
        with atomic_outputs(out, ["sub/train.parquet"]):
            pass


def test_atomic_outputs_overwrite_replaces_only_their_own_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.parquet").write_text("old train")
    (out / "notes.txt").write_text("the user's")
    (out / "adapter").mkdir()
    (out / "adapter" / "old.bin").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_outputs(out, ["train.parquet", "adapter"], overwrite=True) as staged:
            staged.path("train.parquet").write_text("new train")
            raise RuntimeError("killed")
    assert (out / "train.parquet").read_text() == "old train"  # a failed rerun keeps the old outputs
    with atomic_outputs(out, ["train.parquet", "adapter"], overwrite=True) as staged:
        staged.path("train.parquet").write_text("new train")
        staged.path("adapter").mkdir()
        (staged.path("adapter") / "new.bin").write_text("new")
    assert (out / "train.parquet").read_text() == "new train"
    assert [p.name for p in (out / "adapter").iterdir()] == ["new.bin"]
    assert (out / "notes.txt").read_text() == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_outputs_new_folder_gets_the_usual_mode(tmp_path):
    with atomic_outputs(tmp_path / "out", ["a"]) as staged:
        staged.path("a").write_text("a")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask


def test_json_that_python_cannot_load_is_one_line(tmp_path):
    path = tmp_path / "user_feature.jsonl"
    path.write_text('{"user_id": "u1"}\n{"n": ' + "9" * 5000 + "}\n")
    with pytest.raises(SirenError, match=r"user_feature\.jsonl:2: not usable JSON \(Exceeds the limit"):
        list(iter_jsonl(path))


def test_shell_scripts_find_the_data_as_the_stages_do(synthetic_root, tmp_path):
    """`python -m siren.data CATEGORY`: what demo.sh and gpu_check.sh use to find the data root."""

    found = run_in_process("-m", "siren.data", "Movies", "--data_root", str(synthetic_root))
    assert found.stdout.strip() == str(synthetic_root)
    missing = run_in_process("-m", "siren.data", "Movies", "--data_root", str(tmp_path), check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("error: no data for category 'Movies'")
    assert "scripts/get_data.sh Movies" in missing.stderr and missing.stderr.count("\n") == 1


# ---- issue 20: messages that named the wrong cause -------------------------------------------


def test_lone_surrogate_escapes_are_one_line_and_escaped_pairs_are_text(tmp_path):
    """json.loads decodes \\ud800 to a string no UTF-8 writer takes; an escaped pair is one emoji."""
    path = tmp_path / "train.jsonl"
    pair = json.dumps({**SPLIT_ROW, "target": "Film \U0001f3ac, Drama"})  # ensure_ascii: \ud83c\udfac
    assert "\\ud83c\\udfac" in pair
    lone = json.dumps({**SPLIT_ROW, "history_asins": ["a", "@@"]}).replace("@@", "x\\udfac")
    path.write_text(pair + "\n" + lone + "\n")
    lines = iter_jsonl(path)
    assert next(lines)[1]["target"] == "Film \U0001f3ac, Drama"
    with pytest.raises(SirenError, match=r"train\.jsonl:2: not usable JSON \(field history_asins\[1\] holds an "
                                         r"unpaired surrogate escape"):
        next(lines)
    key = tmp_path / "names.json"
    key.write_text('{"\\ud800": "x"}')
    with pytest.raises(SirenError, match=r"names\.json: not usable JSON \(a field name in the record holds an unpaired"):
        read_json(key)
    quoted = tmp_path / "quoted.json"
    quoted.write_text('{"a": "C:\\\\ud800 is a path, not an escape"}')  # an escaped backslash, then "ud800"
    assert read_json(quoted) == {"a": "C:\\ud800 is a path, not an escape"}


def _stored_gzip(rows: list[dict]) -> bytearray:
    """gzip of `rows` with stored (uncompressed) deflate blocks: a flipped byte changes the text, not the
    stream's structure, so only the CRC at the end finds the damage."""
    return bytearray(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), compresslevel=0, mtime=0))


def test_gzip_damage_near_the_end_is_named_not_the_bad_record_it_produced(tmp_path):
    rows = [{**SPLIT_ROW, "parent_asin": f"a{i}"} for i in range(5)]
    damaged = _stored_gzip(rows)
    at = bytes(damaged).rfind(b'"label"')
    damaged[at + 1] ^= 0x20  # "label" -> "Label" in the last row
    path = tmp_path / "test.jsonl.gz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(SirenError, match=r"test\.jsonl\.gz: corrupt gzip data after line 5 \(CRC check failed.*\); "
                                         r"the damaged data already failed at line 5: missing field\(s\) label$"):
        load_split(path)
    # a damaged byte that breaks the UTF-8 of a line: the damage is named too, not the encoding
    damaged = _stored_gzip(rows)
    damaged[bytes(damaged).rfind(b'"T, C"') + 1] = 0xE9
    path.write_bytes(bytes(damaged))
    with pytest.raises(SirenError, match=r"corrupt gzip data after line 5 \(CRC check failed.*failed at line 5: "
                                         r"not UTF-8 text"):
        list(iter_jsonl(path))
    # the same bad record in a sound stream is the record's error, as before
    sound = tmp_path / "valid.jsonl.gz"
    sound.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in [*rows[:4], {"user_id": "u1"}]).encode()))
    with pytest.raises(SirenError, match=r"valid\.jsonl\.gz:5: missing field\(s\) parent_asin"):
        load_split(sound)


def test_gzip_followed_by_other_bytes_is_called_so(tmp_path):
    """Valid gzip with bytes appended was called "not a gzip file"; it is refused with what it is."""
    good = gzip.compress((json.dumps(SPLIT_ROW) + "\n").encode(), mtime=0)
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(good + b"appended text\n")
    message = r"train\.jsonl\.gz: bytes that are not gzip follow the gzip data after line 1 \(trailing garbage"
    with pytest.raises(SirenError, match=message):
        load_split(path)
    with pytest.raises(SirenError, match=r"bytes that are not gzip follow the gzip data \(trailing garbage"):
        read_text(path)
    path.write_bytes(b"plain " + good)  # not gzip from its first byte: still "not a gzip file"
    with pytest.raises(SirenError, match=r"train\.jsonl\.gz: not a gzip file"):
        load_split(path)
    path.write_bytes(good + good)  # two members (as `cat a.gz b.gz` makes) are one valid stream
    assert len(load_split(path)) == 2
    path.write_bytes(good + bytes(16))  # zero padding (tape blocks) is what gzip itself ignores
    assert len(load_split(path)) == 1


def test_a_dangling_symlink_is_called_a_dangling_symlink(tmp_path):
    """It was "an existing file" as an output folder, and "missing" as an input."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(SirenError, match=r"cannot use output folder .*out: .*out is a symlink to .*gone, which does "
                                         r"not exist"):
        check_output_folder(link)
    with pytest.raises(SirenError, match=r"cannot use output folder .*out/deeper: .*out is a symlink to .*gone"):
        check_output_folder(link / "deeper", ["a.json"], overwrite=True)
    with pytest.raises(SirenError, match=r"split file .*out is a symlink to .*gone, which does not exist"):
        load_split(link)
    with pytest.raises(SirenError, match=r"^file .*out is a symlink to .*gone, which does not exist$"):
        read_text(link)
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize("name", ["../slice/Movies", "..", ".", "Movies/", "a/b", "a\\b", "", " ", "Mo\nvies"])
def test_a_category_is_a_name_not_a_path(name):
    from siren.cli import category_name
    from siren.data import check_category_name
    from siren.verl_data import default_verl_dir

    with pytest.raises(SirenError, match="category"):
        check_category_name(name)
    with pytest.raises(SirenError, match="category"):
        resolve_category_dir(name, "/tmp")
    with pytest.raises(SirenError, match="category"):
        default_verl_dir(name, 10, True)
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        category_name(name)


def test_category_names_that_are_names_pass():
    from siren.data import check_category_name

    for name in ("Movies", "Video_Games", "Books..old", "CDs & Vinyl", ".hidden"):
        assert check_category_name(name) == name


def test_a_category_from_a_data_source_is_a_name_too():
    from siren.verl_data import category_of

    assert category_of([{"data_source": "AmazonReviews/Films"}]) == "Films"
    with pytest.raises(SirenError, match=r"data_source 'AmazonReviews/\.\./x': category '\.\./x' is not a name"):
        category_of([{"data_source": "AmazonReviews/../x"}])


def test_python_m_siren_data_refuses_a_path_as_category(synthetic_root):

    proc = run_in_process("-m", "siren.data", "../Movies", "--data_root", str(synthetic_root / "Movies"), check=False)
    assert_refused(proc, only_line=True)
    assert proc.stderr.startswith("error: category '../Movies' is not a name")
    verl = run_in_process("-m", "siren.verl_data", "../x", "10", "true", check=False)
    assert_refused(verl, "is not a name")


def test_output_folder_clear_of_the_inputs(tmp_path):
    from siren.io import check_output_clear_of_inputs

    data = tmp_path / "data" / "Movies"
    data.mkdir(parents=True)
    split = data / "train.jsonl.gz"
    split.write_bytes(b"")
    model = tmp_path / "model"
    model.mkdir()
    alias = tmp_path / "alias"
    alias.symlink_to(data)
    refused = {
        data: "holds", tmp_path / "data": "lies above", tmp_path: "lies above", alias: "holds",
        model: "is", model / "out": "lies inside", split: "is",
    }
    for out, where in refused.items():
        with pytest.raises(SirenError, match=rf"output folder {out} \(--output_dir\) {where} this stage's input"):
            check_output_clear_of_inputs(out, [split, model, None])
    # beside the inputs' folder, or below it, is where the stages write by default
    for out in (data / "verl" / "max@10-long@True", tmp_path / "results", tmp_path / "data" / "Books"):
        assert check_output_clear_of_inputs(out, [split, model]) == out
    with pytest.raises(SirenError, match=r"\(--output_root\) holds"):
        check_output_clear_of_inputs(data, [split], "--output_root")


def test_a_bad_command_line_is_one_line(capsys):
    """argparse's errors (a bad type, a missing flag) end like every other refusal: one `error:` line."""
    from siren.cli import stage_parser

    parser = stage_parser("doc")
    parser.add_argument("--count", type=int, required=True)
    for argv in (["--count", "x"], []):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ") and "--count" in err and "--help" in err
