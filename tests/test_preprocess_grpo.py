"""Stage 2 (preprocess_grpo.py) on the synthetic Movies data (40 users, tests/synthetic_data.py)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, assert_refused, run_in_process

from siren import SirenError
from siren.data import history_lines, load_split
from siren.prompt_tokens import PromptTokenCounter
from siren.prompts import format_sketch
from siren.verl_build import PROMPT_VARIANTS
from siren.verl_data import load_split_rows

sys.path.insert(0, str(REPO))
import preprocess_grpo  # noqa: E402

SCRIPT = str(REPO / "preprocess_grpo.py")


def _write_sketches(path: Path, users: list[str]) -> dict[str, str]:
    """A stage-1 style user_feature.jsonl; every third user gets an empty sketch."""
    sketches = {}
    with open(path, "w", encoding="utf-8") as handle:
        for n, user in enumerate(users):
            text = "" if n % 3 == 2 else format_sketch([f"Topic L{n}", "Space opera"], [f"Topic D{n}"], "Movies")
            sketches[user] = text
            handle.write(json.dumps({"user_id": user, "user_profile_prompt": text}) + "\n")
    return sketches


@pytest.fixture(scope="module")
def sketch_file(synthetic_root, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    users = sorted({r["user_id"] for split in ("train", "valid", "test")
                    for r in load_split(synthetic_root / "Movies" / f"{split}.jsonl.gz")})
    path = tmp_path_factory.mktemp("sketch") / "user_feature.jsonl"
    return path, _write_sketches(path, users)


@pytest.fixture(scope="module")
def built(synthetic_root, sketch_file, tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage2") / "max@3-long@True"
    preprocess_grpo.main([
        "--data_root", str(synthetic_root), "--max_history", "3", "--use_long_history", "true",
        "--sketch_path", str(sketch_file[0]), "--out_dir", str(out), "--tokenizer", str(tiny_model_dir),
    ])
    return out


@pytest.mark.slow
def test_parquet_schema_and_values(built, synthetic_root, sketch_file):
    sketches = sketch_file[1]
    for split, stem in (("train", "train"), ("valid", "val"), ("test", "test")):
        records = load_split(synthetic_root / "Movies" / f"{split}.jsonl.gz")
        frame = pd.read_parquet(built / f"{stem}.parquet")
        assert list(frame.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
        assert len(frame) == len(records)
        rows = load_split_rows(built, stem)  # also checks extra_info.index == position
        for row, record in zip(rows, records, strict=True):
            assert row["data_source"] == "AmazonReviews/Movies"
            assert row["ability"] == "rating_prediction"
            assert row["reward_model"] == {"style": "rule", "ground_truth": f"{record['label']:.1f}"}
            info = row["extra_info"]
            assert (info["split"], info["user_id"], info["parent_asin"]) == (stem, record["user_id"], record["parent_asin"])
            assert [m["role"] for m in row["prompt"]] == ["system", "user"]
            user_text = row["prompt"][1]["content"]
            recent = history_lines(record["history"])[-3:]
            positions = [user_text.index(line) for line in recent]
            assert positions == sorted(positions), "recent history lines must appear oldest first"
            older = history_lines(record["history"])[:-3]
            assert all(line not in user_text for line in older if line not in recent)
            assert record["target"] in user_text
            sketch = sketches[record["user_id"]]
            if sketch:
                assert sketch in user_text and user_text.index(sketch) < user_text.index(recent[0] if recent else record["target"])
            else:
                assert "Long-term interests" not in user_text


@pytest.mark.slow
def test_prompt_stats_contract(built, synthetic_root, sketch_file):
    stats = json.loads((built / "prompt_stats.json").read_text())
    assert set(stats) == {"tokenizer", "max_history", "use_long_history", "splits", "counts"}
    assert stats["max_history"] == 3 and stats["use_long_history"] is True
    assert set(stats["splits"]) == {"train", "val", "test"}
    for per_variant in stats["splits"].values():
        assert set(per_variant) == set(PROMPT_VARIANTS)
        for summary in per_variant.values():
            assert set(summary) == {"n", "mean", "p50", "p95", "max"}
            assert summary["p50"] <= summary["p95"] <= summary["max"]
        # the sketch is in the prompt, so the stored prompt is the sketch + recent variant
        assert per_variant["as_built"] == per_variant["sketch_recent"]
        assert per_variant["recent_only"]["mean"] < per_variant["sketch_recent"]["mean"]
        assert per_variant["recent_only"]["mean"] <= per_variant["raw_history"]["mean"]
    sketches = sketch_file[1]
    test_records = load_split(synthetic_root / "Movies" / "test.jsonl.gz")
    assert stats["counts"]["rows_without_sketch"]["test"] == sum(not sketches[r["user_id"]] for r in test_records)
    assert stats["counts"]["rows_over_max_prompt_tokens"] == {"train": 0, "val": 0, "test": 0}
    per_row = np.load(built / "prompt_tokens_test.npz")
    assert set(per_row.files) == set(PROMPT_VARIANTS)
    assert all(len(per_row[v]) == len(test_records) for v in PROMPT_VARIANTS)
    assert float(per_row["raw_history"].max()) == stats["splits"]["test"]["raw_history"]["max"]
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["counts"]["rows"]["test"] == len(test_records)
    assert manifest["counts"]["token_counting"] == "chunked"


@pytest.mark.slow
def test_token_counts_equal_whole_prompt_tokenization(built, tiny_model_dir):
    from siren.prompts import chat_prompt_text
    from siren.tokenization import count_tokens, load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)  # the loader later stages use, not the counting shortcut
    prompts = [row["prompt"] for row in load_split_rows(built, "test")]
    exact = count_tokens(tokenizer, [chat_prompt_text(tokenizer, p) for p in prompts])
    per_row = np.load(built / "prompt_tokens_test.npz")
    assert per_row["as_built"].tolist() == exact


class _CharPairTokenizer:
    """Counts one token per two characters: chunk counts do not add up to whole-text counts."""

    chat_template = "stub"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"[{m['role']}]{m['content']}\n" for m in messages) + "[assistant]"

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[0] * (len(t) // 2) for t in texts]}


def test_counter_falls_back_to_whole_text_when_chunks_do_not_add_up():
    counter = PromptTokenCounter(_CharPairTokenizer())
    prompts = [[{"role": "system", "content": "s"}, {"role": "user", "content": "a\nbb\nc" * k}] for k in range(1, 6)]
    assert counter.verify(prompts) is False and counter.whole_text
    texts = [_CharPairTokenizer().apply_chat_template(p) for p in prompts]
    assert counter.count(prompts).tolist() == [len(t) // 2 for t in texts]


@pytest.mark.parametrize("text,expected", [("False", False), ("false", False), ("0", False), ("no", False),
                                           ("True", True), ("true", True), ("1", True), ("yes", True)])
def test_use_long_history_flag_parses_booleans(text, expected):
    assert preprocess_grpo.parse_args(["--use_long_history", text]).use_long_history is expected


def test_use_long_history_rejects_non_boolean(capsys):
    with pytest.raises(SystemExit):
        preprocess_grpo.parse_args(["--use_long_history", "maybe"])
    assert "expected a boolean" in capsys.readouterr().err


def test_long_history_false_default_dir_no_sketch_made_up_category(synthetic_root, sketch_file, tmp_path):
    """--use_long_history False really means False; a made-up category gets its own noun."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_root / "Movies", root / "Films")
    proc = run_in_process(SCRIPT, "--category", "Films", "--data_root", str(root), "--use_long_history", "False",
                      "--sketch_path", str(sketch_file[0]), "--limit", "5", cwd=tmp_path)
    out = tmp_path / "data" / "Films" / "verl" / "max@10-long@False"
    rows = load_split_rows(out, "train")
    assert len(rows) == 5 and len(load_split_rows(out, "test")) == 5
    for row in rows:
        assert row["data_source"] == "AmazonReviews/Films"
        system, user = row["prompt"][0]["content"], row["prompt"][1]["content"]
        assert "candidate film" in system and "Candidate film:" in user
        assert "Long-term interests" not in user and "Space opera" not in user
    assert "no --tokenizer" in proc.stdout
    assert not (out / "prompt_stats.json").exists()
    # finished outputs are not replaced without --overwrite
    again = run_in_process(SCRIPT, "--category", "Films", "--data_root", str(root), "--use_long_history", "False",
                       "--limit", "5", cwd=tmp_path, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr


def test_no_sketch_file_runs_without_sketch_and_says_so(synthetic_root, tmp_path, capsys):
    out = tmp_path / "out"
    preprocess_grpo.main(["--data_root", str(synthetic_root), "--out_dir", str(out), "--limit", "4",
                          "--use_long_history", "false"])
    assert "no --sketch_path given (--use_long_history false)" in capsys.readouterr().out
    assert all("Long-term interests" not in r["prompt"][1]["content"] for r in load_split_rows(out, "train"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rows_without_sketch"] == {"train": 4, "val": 4, "test": 4}


def test_long_history_without_a_sketch_is_refused(synthetic_root, tmp_path):
    """max@10-long@True must hold sketches: without --sketch_path the script stops before writing."""
    proc = run_in_process(SCRIPT, "--data_root", str(synthetic_root), "--use_long_history", "True", "--limit", "4",
                      cwd=tmp_path, check=False)
    assert_refused(proc, only_line=True)
    assert proc.stderr.startswith("error: --use_long_history true needs --sketch_path")
    assert not (tmp_path / "data").exists()
    with pytest.raises(SirenError, match="--use_long_history true needs --sketch_path"):
        preprocess_grpo.main(["--data_root", str(synthetic_root), "--out_dir", str(tmp_path / "o")])  # the default
    assert not (tmp_path / "o").exists()


def test_a_sketch_file_of_other_users_is_refused(synthetic_root, tmp_path, capsys):
    """Issue 20: 0 users covered used to be a warning that built a long@True folder without sketches."""
    sketch = tmp_path / "user_feature.jsonl"
    _write_sketches(sketch, ["SOMEONE_ELSE_1", "SOMEONE_ELSE_2"])
    args = ["--data_root", str(synthetic_root), "--out_dir", str(tmp_path / "out"), "--sketch_path", str(sketch),
            "--limit", "3"]
    with pytest.raises(SirenError, match=r"user_feature\.jsonl covers none of the \d+ users in the data \(2 users in "
                                         r"the file, e\.g\. 'SOMEONE_ELSE_1'\): no prompt would carry a sketch"):
        preprocess_grpo.main(args)
    assert not (tmp_path / "out").exists()
    preprocess_grpo.main([*args, "--use_long_history", "false"])  # the sketch is not used: a warning only
    assert "covers 0 of the" in capsys.readouterr().err


def test_a_sketch_file_whose_users_all_have_empty_sketches_is_refused(synthetic_root, tmp_path):
    users = sorted({r["user_id"] for r in load_split(synthetic_root / "Movies" / "train.jsonl.gz")})
    sketch = tmp_path / "user_feature.jsonl"
    sketch.write_text("".join(json.dumps({"user_id": u, "user_profile_prompt": " "}) + "\n" for u in users))
    with pytest.raises(SirenError, match=r"holds only empty sketches for the \d+ of the \d+ data users it covers"):
        preprocess_grpo.main(["--data_root", str(synthetic_root), "--out_dir", str(tmp_path / "out"),
                              "--sketch_path", str(sketch), "--limit", "3"])
    assert not (tmp_path / "out").exists()


def test_partial_sketch_coverage_still_warns_with_counts(synthetic_root, tmp_path, capsys):
    first = load_split(synthetic_root / "Movies" / "train.jsonl.gz")[0]["user_id"]
    sketch = tmp_path / "user_feature.jsonl"
    _write_sketches(sketch, [first, "SOMEONE_ELSE"])
    preprocess_grpo.main(["--data_root", str(synthetic_root), "--out_dir", str(tmp_path / "out"),
                          "--sketch_path", str(sketch), "--limit", "3"])
    assert re.search(r"covers 1 of the \d+ users in the data \(2 users in the sketch file\)", capsys.readouterr().err)


@pytest.mark.parametrize("rows, message", [
    ([("u1", "a"), ("u2", "b"), ("u1", "c")], r"1 row\(s\) repeat an earlier \(user_id\), first 'u1' at lines 1 and 3; "
                                              r"the sketch file holds one row per user"),
    ([("u1", "a"), (7, "b")], r"user_feature\.jsonl:2: user_id must be a non-empty string, got a number 7"),
    ([("u1", "a"), ("u2", None)], r"user_feature\.jsonl:2: user_profile_prompt must be a string, got null"),
], ids=["duplicate-user", "integer-user", "null-sketch"])
def test_sketch_file_rows_are_checked(tmp_path, rows, message):
    """Issue 20: a user on two rows silently kept the last sketch."""
    from siren.verl_build import load_sketches

    path = tmp_path / "user_feature.jsonl"
    path.write_text("".join(json.dumps({"user_id": u, "user_profile_prompt": t}) + "\n" for u, t in rows))
    with pytest.raises(SirenError, match=message):
        load_sketches(path)


def test_a_lone_surrogate_escape_in_a_split_is_one_line(synthetic_root, tmp_path):
    """Issue 20: a JSON \\ud800 escape decoded to a string no UTF-8 writer takes: a traceback at the parquet write."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_root / "Movies", root / "Movies")
    valid_file = root / "Movies" / "valid.jsonl.gz"
    rows = _gz_rows(valid_file)
    lines = [json.dumps(row) for row in rows]
    lines[1] = json.dumps({**rows[1], "target": "@@"}).replace("@@", "Am\\ud800lie")
    import gzip

    valid_file.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode()))
    out = tmp_path / "out"
    proc = run_in_process(SCRIPT, "--data_root", str(root), "--use_long_history", "false", "--output_dir", str(out),
                      check=False)
    assert_refused(proc, only_line=True)
    assert re.search(r"valid\.jsonl\.gz:2: not usable JSON \(field target holds an unpaired surrogate", proc.stderr)
    assert not out.exists()


@pytest.mark.parametrize("where", ["category", "above", "sketch"])
def test_an_output_folder_where_the_inputs_are_is_refused(synthetic_root, sketch_file, tmp_path, where):
    """Issue 20: no stage writes into a folder that holds its inputs, or above or below them."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_root / "Movies", root / "Movies")
    sketch = tmp_path / "sketch" / "user_feature.jsonl"
    sketch.parent.mkdir()
    shutil.copy(sketch_file[0], sketch)
    out = {"category": root / "Movies", "above": root, "sketch": sketch.parent}[where]
    before = sorted(p.name for p in out.iterdir())
    proc = run_in_process(SCRIPT, "--data_root", str(root), "--sketch_path", str(sketch), "--output_dir", str(out),
                      "--overwrite", check=False)
    assert_refused(proc, only_line=True)
    assert re.search(r"error: output folder .* \(--output_dir\) (holds|lies above) this stage's input", proc.stderr)
    assert "--overwrite" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_category_that_is_a_path_is_refused(synthetic_root, tmp_path, capsys):
    """Issue 20: --category ../slice/Movies wrote outside the output root."""
    with pytest.raises(SystemExit):
        preprocess_grpo.parse_args(["--category", "../slice/Movies"])
    assert "is not a name" in capsys.readouterr().err


def test_missing_split_file_is_named(synthetic_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root / "Movies", root / "Movies")
    (root / "Movies" / "valid.jsonl.gz").unlink()
    proc = run_in_process(SCRIPT, "--data_root", str(root), "--out_dir", str(tmp_path / "out"), "--use_long_history",
                      "false", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: missing split file") and "valid.jsonl.gz" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_sketch_file_and_flags_are_errors(synthetic_root, tmp_path):
    sketch = tmp_path / "user_feature.jsonl"
    sketch.write_text('{"user_id": "u1"}\n')
    with pytest.raises(SirenError, match="missing field"):
        preprocess_grpo.main(["--data_root", str(synthetic_root), "--out_dir", str(tmp_path / "o"),
                              "--sketch_path", str(sketch)])
    with pytest.raises(SirenError, match="--sketch_path: missing sketch file: .*nope.jsonl"):
        preprocess_grpo.main(["--data_root", str(synthetic_root), "--sketch_path", str(tmp_path / "nope.jsonl")])
    with pytest.raises(SirenError, match="--max_history"):
        preprocess_grpo.main(["--data_root", str(synthetic_root), "--max_history", "-1"])
    assert not (tmp_path / "o").exists()


def _gz_rows(path: Path) -> list[dict]:
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_gz_rows(path: Path, rows: list[dict]) -> None:
    import gzip

    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def test_a_bad_test_split_leaves_nothing_and_the_rerun_is_not_refused(synthetic_root, tmp_path):
    """Issue 14: an integer user_id in test only used to leave train/val behind and block the rerun."""
    root = tmp_path / "root"
    shutil.copytree(synthetic_root / "Movies", root / "Movies")
    test_file = root / "Movies" / "test.jsonl.gz"
    good = _gz_rows(test_file)
    _write_gz_rows(test_file, [good[0], {**good[1], "user_id": 7}, *good[2:]])
    out = tmp_path / "verl" / "max@10-long@False"
    args = ["--data_root", str(root), "--use_long_history", "false", "--limit", "3", "--output_dir", str(out)]
    proc = run_in_process(SCRIPT, *args, check=False)
    assert_refused(proc, only_line=True)
    assert re.search(r"test\.jsonl\.gz:2: user_id must be a non-empty string, got a number 7", proc.stderr)
    assert not (tmp_path / "verl").exists()  # not even the parent folders
    _write_gz_rows(test_file, good)
    again = run_in_process(SCRIPT, *args, check=False)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.parquet", "train.parquet", "val.parquet"]


def test_a_failed_write_of_the_last_file_keeps_none(synthetic_root, tiny_model_dir, tmp_path, monkeypatch):
    """A full disk while writing test.parquet: train/val/prompt stats are not left behind either."""
    import errno

    real_to_parquet = pd.DataFrame.to_parquet

    def full_disk_on_test(frame, path, *args, **kwargs):
        if Path(path).name == "test.parquet":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_to_parquet(frame, path, *args, **kwargs)

    out = tmp_path / "out"
    args = ["--data_root", str(synthetic_root), "--use_long_history", "false", "--limit", "3",
            "--output_dir", str(out), "--tokenizer", str(tiny_model_dir)]
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_disk_on_test)
    with pytest.raises(SirenError, match=r"cannot write the outputs in .*out: No space left on device; nothing was kept"):
        preprocess_grpo.main(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.setattr(pd.DataFrame, "to_parquet", real_to_parquet)
    preprocess_grpo.main(args)  # not refused as "already exists"
    assert (out / "test.parquet").is_file() and (out / "prompt_stats.json").is_file()


def test_max_history_zero_is_refused(synthetic_root, tmp_path):
    """max@N means the N most recent ratings: 0 would write prompts that say the user has none."""
    proc = run_in_process(SCRIPT, "--data_root", str(synthetic_root), "--use_long_history", "false",
                      "--max_history", "0", "--output_dir", str(tmp_path / "out"), check=False)
    assert_refused(proc, only_line=True)
    assert proc.stderr.startswith("error: --max_history must be at least 1, got 0")
    assert not (tmp_path / "out").exists()


def test_duplicate_rows_are_reported_and_kept(synthetic_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root / "Movies", root / "Movies")
    train_file = root / "Movies" / "train.jsonl.gz"
    rows = _gz_rows(train_file)
    _write_gz_rows(train_file, [rows[0], rows[1], rows[0], *rows[2:]])
    out = tmp_path / "out"
    proc = run_in_process(SCRIPT, "--data_root", str(root), "--use_long_history", "false", "--limit", "4",
                      "--output_dir", str(out))
    assert re.search(r"warning: .*train\.jsonl\.gz: 1 row\(s\) repeat an earlier \(user_id, parent_asin\), first "
                     r".* at lines 1 and 3; all rows are kept, each as its own parquet row", proc.stderr)
    assert proc.stderr.count("repeat an earlier") == 1
    frame = pd.read_parquet(out / "train.parquet")
    assert [info["parent_asin"] for info in frame["extra_info"]][:3] == [rows[0]["parent_asin"], rows[1]["parent_asin"],
                                                                         rows[0]["parent_asin"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["duplicate_rows"] == {"train": 1, "valid": 0, "test": 0}


def test_the_authors_and_the_canonical_flags_parse_alike():
    authors = preprocess_grpo.parse_args(["--category", "Books", "--data_root", "d", "--max_history", "30",
                                          "--use_long_history", "False"])
    assert (authors.category, authors.data_root, authors.max_history, authors.use_long_history) == ("Books", "d", 30, False)
    canonical = preprocess_grpo.parse_args(["--category", "Books", "--output_dir", "o", "--limit", "5"])
    aliases = preprocess_grpo.parse_args(["--data_category", "Books", "--out_dir", "o", "--limit", "5"])
    assert vars(canonical) == vars(aliases)


def test_overwrite_replaces_the_stage_files_only_and_flags_a_stale_token_report(synthetic_root, tiny_model_dir,
                                                                                tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--data_root", str(synthetic_root), "--use_long_history", "false", "--limit", "2", "--output_dir", str(out)]
    preprocess_grpo.main([*base, "--tokenizer", str(tiny_model_dir)])
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    preprocess_grpo.main([*base, "--limit", "3", "--overwrite"])
    assert (out / "notes.txt").read_text() == "mine"
    assert len(pd.read_parquet(out / "train.parquet")) == 3
    assert "prompt_stats.json is from an earlier run" in capsys.readouterr().err


def test_bench_preprocess_times_the_stage_and_keeps_its_report(synthetic_root, tiny_model_dir, tmp_path):
    report = tmp_path / "bench.json"
    args = ["scripts/bench_preprocess.py", "--data_root", str(synthetic_root), "--tokenizer", str(tiny_model_dir),
            "--limit", "3", "--repeats", "1", "--out_json", str(report)]
    proc = run_in_process(*args)
    assert "run 1/1:" in proc.stdout
    figures = json.loads(report.read_text())
    assert figures["rows"] == {"train": 3, "val": 3, "test": 3} and figures["token_counting"] == "chunked"
    again = run_in_process(*args, check=False)  # refused before any run
    assert again.returncode == 2 and "--overwrite" in again.stderr and "run 1/1" not in again.stdout


# --------------------------------------------------------------------------------------------------
# Issue 20: the sketch's manifest, one run per folder, what a killed run leaves


def test_a_sketch_of_another_category_or_kind_is_refused(synthetic_root, sketch_file, tmp_path):
    from siren.io import write_manifest

    folder = tmp_path / "sketch"
    folder.mkdir()
    shutil.copy(sketch_file[0], folder / "user_feature.jsonl")
    args = ["--data_root", str(synthetic_root), "--sketch_path", str(folder / "user_feature.jsonl"), "--limit", "3",
            "--max_history", "3"]
    write_manifest(folder, script="generate_interest_sketch.py", args={"category": "Books"})
    with pytest.raises(SirenError, match=r"--sketch_path .*user_feature\.jsonl was made with category 'Books' .*, "
                                         r"but this run asks for 'Movies' \(--category\)"):
        preprocess_grpo.main([*args, "--out_dir", str(tmp_path / "a")])
    write_manifest(folder, script="preprocess_grpo.py", args={"category": "Movies"})
    with pytest.raises(SirenError, match=r"was written by preprocess_grpo\.py, not generate_interest_sketch\.py"):
        preprocess_grpo.main([*args, "--out_dir", str(tmp_path / "b")])
    write_manifest(folder, script="generate_interest_sketch.py", args={"category": "Movies"})
    preprocess_grpo.main([*args, "--out_dir", str(tmp_path / "c")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and (tmp_path / "c" / "val.parquet").is_file()


def test_one_run_per_folder_and_a_killed_runs_staging_folder_is_removed(synthetic_root, tmp_path, capsys):
    from other_runs import run_holding, run_killed_while_writing

    out = tmp_path / "max@3-long@False"
    args = ["--data_root", str(synthetic_root), "--out_dir", str(out), "--limit", "3", "--max_history", "3",
            "--use_long_history", "false"]
    with run_holding(out) as pid:
        with pytest.raises(SirenError, match=rf"^output folder {re.escape(str(out))} is in use by another run "
                                             rf"\(process {pid}, started [^)]*\); one run per folder"):
            preprocess_grpo.main(args)
    assert not out.exists()
    killed = run_killed_while_writing(out, "train.parquet")
    preprocess_grpo.main(args)
    err = capsys.readouterr().err
    assert f"took over the lock of {out} from process {killed}, started" in err
    assert re.search(r"removed 1 staging folder\(s\) a killed run of .* left: \.max@3-long@False\.staging-", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_latest_rows_per_user_keeps_each_users_most_recent_rows_in_file_order():
    from siren.verl_build import latest_rows_per_user

    rows = [{"user_id": "a", "timestamp": 5, "n": 0}, {"user_id": "b", "timestamp": 1, "n": 1},
            {"user_id": "a", "timestamp": 9, "n": 2}, {"user_id": "a", "timestamp": 2, "n": 3},
            {"user_id": "b", "timestamp": 1, "n": 4}, {"user_id": "a", "timestamp": 9, "n": 5}]
    assert [r["n"] for r in latest_rows_per_user(rows, 1)] == [4, 5]        # a tie goes to the later line
    assert [r["n"] for r in latest_rows_per_user(rows, 2)] == [1, 2, 4, 5]
    assert [r["n"] for r in latest_rows_per_user(rows, 9)] == [0, 1, 2, 3, 4, 5]


def test_train_rows_per_user_filters_train_only_before_the_limit(synthetic_root, tmp_path):
    from siren.verl_build import latest_rows_per_user

    out = tmp_path / "out"
    preprocess_grpo.main(["--data_root", str(synthetic_root), "--out_dir", str(out), "--use_long_history", "false",
                          "--train_rows_per_user", "1", "--limit", "7"])
    train = load_split(synthetic_root / "Movies" / "train.jsonl.gz")
    expected = latest_rows_per_user(train, 1)[:7]
    built = load_split_rows(out, "train")
    ids = [(r["extra_info"]["user_id"], r["extra_info"]["parent_asin"]) for r in built]
    assert ids == [(r["user_id"], r["parent_asin"]) for r in expected]
    assert len({user for user, _ in ids}) == 7                            # one row per user
    assert len(load_split_rows(out, "val")) == len(load_split_rows(out, "test")) == 7
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["train_rows_per_user"] == 1
