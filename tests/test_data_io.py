"""siren.data validation errors, siren.io atomic writes and manifests, scripts/get_data.sh."""

import gzip
import json
import os
import subprocess
from pathlib import Path

import pytest

from siren import SirenError
from siren.data import (
    load_history,
    load_split,
    parse_history_line,
    resolve_category_dir,
    split_item_text,
)
from siren.io import atomic_path, atomic_write_json, check_outputs_free, read_manifest, write_manifest

REPO = Path(__file__).resolve().parents[1]
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
        check_outputs_free([tmp_path / "done.json"], overwrite=False)
    check_outputs_free([tmp_path / "done.json"], overwrite=True)


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


def test_gc_paused_restores_the_collector_even_after_an_error():
    import gc

    from siren.cli import gc_paused

    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a collector the caller had turned off stays off
    finally:
        gc.enable()


def test_run_main_exit_codes_and_one_exit_handler():
    import gc

    from siren import SirenError
    from siren.cli import run_main

    def fails():
        raise SirenError("bad input")

    assert run_main(lambda: None) == 0
    assert run_main(fails) == 2
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the heap is frozen only at interpreter exit
