"""Stage 4c (preprocess_hidden.py): the answer-only prompt/completion DatasetDict."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import load_script

from siren import SirenError
from siren.answer_only_data import completion_text, default_hidden_dir
from siren.prompts import EMPTY_THINK

STUDENT_TAIL = EMPTY_THINK + "<answer>"


def test_completion_is_what_the_teacher_writes():
    """The GRPO teacher answers like the reward's ground truth ("4.0"), not "4"."""
    assert completion_text(4.0) == "4.0</answer>"
    assert completion_text(1) == "1.0</answer>"
    assert completion_text(5) == "5.0</answer>"
    with pytest.raises(SirenError, match="not a whole star"):
        completion_text(3.5)


def test_the_first_completion_token_is_the_rating_token(tiny_model_dir):
    """Answer-only decoding reads one token after `<answer>`: the completion must start with it."""
    from siren.tokenization import load_tokenizer, rating_token_ids

    tokenizer = load_tokenizer(tiny_model_dir)
    ratings = rating_token_ids(tokenizer)
    for rating, token_id in ratings.items():
        ids = tokenizer(completion_text(rating), add_special_tokens=False)["input_ids"]
        assert ids[0] == token_id
        assert tokenizer.decode(ids[1:]) == ".0</answer>"


def test_default_folder_follows_the_parquet_folder_name(tmp_path):
    parquet_dir = tmp_path / "verl" / "max@30-long@True"
    assert default_hidden_dir(parquet_dir, "Books") == Path("data/Books/hidden/max@30-long@True")
    with pytest.raises(SirenError, match="pass --output_dir"):
        default_hidden_dir(tmp_path / "my_parquet", "Books")


@pytest.mark.slow
def test_end_to_end(tiny_model_dir, verl_dir, tmp_path, capsys):
    from datasets import load_from_disk

    from siren.cli import run_main

    out = tmp_path / "hidden"
    script = load_script("preprocess_hidden.py")
    argv = ["--data_path", str(verl_dir), "--tokenizer", str(tiny_model_dir), "--out_dir", str(out)]
    assert run_main(lambda: script.main(argv)) == 0
    assert "wrote the answer-only DatasetDict" in capsys.readouterr().out
    dataset = load_from_disk(str(out))
    assert sorted(dataset) == ["test", "train", "valid"]
    for split, stem in (("train", "train"), ("valid", "val"), ("test", "test")):
        parquet = pd.read_parquet(verl_dir / f"{stem}.parquet")
        part = dataset[split]
        assert part.column_names == ["prompt", "completion", "label", "index", "user_id", "parent_asin"]
        assert part["index"] == list(range(len(parquet)))
        assert part["parent_asin"] == [info["parent_asin"] for info in parquet["extra_info"]]
        assert part["label"] == [float(rm["ground_truth"]) for rm in parquet["reward_model"]]
        assert all(p.startswith("<|im_start|>system\n") and p.endswith("<|im_start|>assistant\n" + STUDENT_TAIL)
                   for p in part["prompt"])
        assert part["completion"] == [f"{label:.1f}</answer>" for label in part["label"]]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["path"] == str(tiny_model_dir.resolve())
    assert manifest["tokenizer"]["vocabulary_sha256"] and manifest["category"] == "Movies"
    assert manifest["counts"]["train"] == dataset["train"].num_rows
    # the --model folder's identity, which stages 5 and 6 compare with theirs (its tokenizer files)
    from siren.modeling import model_record

    assert manifest["model"] == model_record(tiny_model_dir)
    assert manifest["model"]["tokenizer"]["vocabulary_sha256"] and manifest["model"]["tokenizer"]["chat_template_sha256"]


@pytest.mark.slow
def test_default_out_dir_and_refusing_to_overwrite(tiny_model_dir, verl_dir, tmp_path, monkeypatch, capsys):
    from siren.cli import run_main

    script = load_script("preprocess_hidden.py")
    monkeypatch.chdir(tmp_path)
    argv = ["--data_path", str(verl_dir), "--tokenizer", str(tiny_model_dir), "--limit", "3"]
    assert run_main(lambda: script.main(argv)) == 0
    out = tmp_path / "data" / "Movies" / "hidden" / verl_dir.name
    assert (out / "dataset_dict.json").is_file() and (out / "manifest.json").is_file()
    assert run_main(lambda: script.main(argv)) == 2
    assert "already exists" in capsys.readouterr().err
    assert run_main(lambda: script.main([*argv, "--overwrite"])) == 0


def test_bad_inputs_are_one_line_errors(tiny_model_dir, verl_dir, tmp_path):
    script = load_script("preprocess_hidden.py")
    no_tokenizer = tmp_path / "weights_only"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    with pytest.raises(SirenError, match="holds no tokenizer"):
        script.main(["--data_path", str(verl_dir), "--tokenizer", str(no_tokenizer), "--out_dir", str(tmp_path / "a")])

    empty = tmp_path / "max@10-long@False"
    empty.mkdir()
    for stem in ("train", "val", "test"):
        frame = pd.read_parquet(verl_dir / f"{stem}.parquet")
        (frame.iloc[:0] if stem == "val" else frame).to_parquet(empty / f"{stem}.parquet", index=False)
    with pytest.raises(SirenError, match="val.parquet: the split is empty"):
        script.main(["--data_path", str(empty), "--tokenizer", str(tiny_model_dir), "--out_dir", str(tmp_path / "b")])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------------
# Flags: the canonical names, the authors' command, and what they cannot mean together


def test_canonical_flags_and_aliases_parse_alike():
    script = load_script("preprocess_hidden.py")
    canonical = script.parse_args(["--data_path", "d", "--model", "m", "--output_dir", "o", "--limit", "3"])
    aliases = script.parse_args(["--data_path", "d", "--tokenizer", "m", "--out_dir", "o", "--limit", "3"])
    assert vars(canonical) == vars(aliases)
    assert canonical.model == "m" and canonical.output_dir == "o" and canonical.limit == 3


def test_the_authors_command_finds_the_stage2_folder():
    """`preprocess_hidden.py --category Movies --max_history 10`: the parquet folder stage 2 wrote."""
    script = load_script("preprocess_hidden.py")
    args = script.parse_args(["--category", "Movies", "--max_history", "10", "--model", "m"])
    assert script.resolve_data_path(args) == Path("data/Movies/verl/max@10-long@True")
    args = script.parse_args(["--category", "Books", "--max_history", "30", "--use_long_history", "false", "--model", "m"])
    assert script.resolve_data_path(args) == Path("data/Books/verl/max@30-long@False")
    assert script.resolve_data_path(script.parse_args(["--category", "Movies", "--model", "m"])) == Path(
        "data/Movies/verl/max@10-long@True")
    with pytest.raises(SirenError, match="give --data_path .* or --category"):
        script.resolve_data_path(script.parse_args(["--model", "m"]))
    with pytest.raises(SirenError, match="--max_history 30 disagrees with --data_path .*max@10-long@True"):
        script.resolve_data_path(script.parse_args(["--data_path", "data/x/verl/max@10-long@True", "--max_history", "30",
                                                    "--model", "m"]))


def test_the_authors_command_end_to_end(tiny_model_dir, verl_dir, tmp_path, monkeypatch, capsys):
    from siren.cli import run_main

    monkeypatch.chdir(tmp_path)
    stage2 = tmp_path / "data" / "Movies" / "verl" / verl_dir.name  # max@10-long@False
    stage2.parent.mkdir(parents=True)
    stage2.symlink_to(verl_dir, target_is_directory=True)
    script = load_script("preprocess_hidden.py")
    argv = ["--category", "Movies", "--max_history", "10", "--use_long_history", "false",
            "--tokenizer", str(tiny_model_dir), "--limit", "2"]
    assert run_main(lambda: script.main(argv)) == 0, capsys.readouterr().err
    assert (tmp_path / "data" / "Movies" / "hidden" / verl_dir.name / "dataset_dict.json").is_file()


# --------------------------------------------------------------------------------------------------
# Faults (issue 14): --overwrite replaces only this stage's entries; bad output and input paths


def test_overwrite_keeps_the_files_this_stage_did_not_write(tiny_model_dir, verl_dir, tmp_path):
    from datasets import load_from_disk

    from siren.cli import run_main

    out = tmp_path / "hidden"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "valid").mkdir()  # not this stage's until it writes one: refused without --overwrite
    script = load_script("preprocess_hidden.py")
    argv = ["--data_path", str(verl_dir), "--model", str(tiny_model_dir), "--output_dir", str(out), "--limit", "2"]
    assert run_main(lambda: script.main(argv)) == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "valid"]
    assert run_main(lambda: script.main([*argv, "--overwrite"])) == 0
    assert run_main(lambda: script.main([*argv[:-1], "3", "--overwrite"])) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["dataset_dict.json", "manifest.json", "notes.txt", "test", "train",
                                                    "valid"]
    assert load_from_disk(str(out))["train"].num_rows == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind


def test_output_path_that_is_a_file(tiny_model_dir, verl_dir, tmp_path, capsys):
    from siren.cli import run_main

    script = load_script("preprocess_hidden.py")
    (tmp_path / "taken").write_text("a file")
    for out, message in ((tmp_path / "taken", "is an existing file"), (tmp_path / "taken" / "sub", "is a file")):
        argv = ["--data_path", str(verl_dir), "--model", str(tiny_model_dir), "--output_dir", str(out)]
        assert run_main(lambda argv=argv: script.main(argv)) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert (tmp_path / "taken").read_text() == "a file"


def test_input_that_is_not_a_parquet(tiny_model_dir, verl_dir, tmp_path, capsys):
    import shutil

    from siren.cli import run_main

    bad = tmp_path / "max@10-long@False"
    shutil.copytree(verl_dir, bad)
    (bad / "val.parquet").write_text("user_id,label\nu1,5\n")  # a CSV under a parquet name
    script = load_script("preprocess_hidden.py")
    argv = ["--data_path", str(bad), "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")]
    assert run_main(lambda: script.main(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "val.parquet" in err, err
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Issue 20: never where the inputs are, never another stage's files, the input's manifest, one run
# per folder


def _stage2_folder(verl_dir: Path, folder: Path, max_history: int = 10) -> Path:
    """A copy of `verl_dir` with the manifest stage 2 writes (its args), in a folder of any name."""
    import shutil

    from siren.io import write_manifest

    shutil.copytree(verl_dir, folder)
    write_manifest(folder, script="preprocess_grpo.py",
                   args={"category": "Movies", "max_history": max_history, "use_long_history": False})
    return folder


def test_the_output_folder_may_not_be_the_input_folder(tiny_model_dir, verl_dir, tmp_path):
    """4c --output_dir pointed at its own input folder with --overwrite replaced stage 2's manifest.json."""
    parquet = _stage2_folder(verl_dir, tmp_path / "max@10-long@False")
    before = (parquet / "manifest.json").read_bytes()
    script = load_script("preprocess_hidden.py")
    for out in (parquet, parquet / "hidden", tmp_path):
        with pytest.raises(SirenError, match=r"\(--output_dir\) (is|lies inside|holds) this stage's input"):
            script.main(["--data_path", str(parquet), "--model", str(tiny_model_dir), "--output_dir", str(out),
                         "--overwrite"])
    assert (parquet / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in parquet.iterdir()) == ["manifest.json", "test.parquet", "train.parquet",
                                                        "val.parquet"]


def test_overwrite_never_replaces_another_stages_folder(tiny_model_dir, verl_dir, tmp_path):
    parquet = _stage2_folder(verl_dir, tmp_path / "max@10-long@False")
    other = _stage2_folder(verl_dir, tmp_path / "other" / "max@10-long@False")  # stage 2's, not this run's input
    before = (other / "manifest.json").read_bytes()
    script = load_script("preprocess_hidden.py")
    with pytest.raises(SirenError, match=r"holds the outputs of preprocess_grpo\.py .* never replaces another stage's "
                                         r"files, with or without --overwrite"):
        script.main(["--data_path", str(parquet), "--model", str(tiny_model_dir), "--output_dir", str(other),
                     "--overwrite"])
    assert (other / "manifest.json").read_bytes() == before


def test_max_history_that_contradicts_stage2s_manifest_is_refused(tiny_model_dir, verl_dir, tmp_path):
    """4c --max_history 5 on a folder built with 10 (not named max@10-...) was ignored while its manifest said 5."""
    parquet = _stage2_folder(verl_dir, tmp_path / "my_parquet")
    script = load_script("preprocess_hidden.py")
    argv = ["--data_path", str(parquet), "--model", str(tiny_model_dir), "--limit", "2"]
    with pytest.raises(SirenError, match=r"--data_path .*my_parquet was made with max_history 10 \(.*manifest\.json\), "
                                         r"but this run asks for 5 \(--max_history\)"):
        script.main([*argv, "--max_history", "5", "--output_dir", str(tmp_path / "a")])
    with pytest.raises(SirenError, match=r"made with category 'Movies' .* asks for 'Books' \(--category\)"):
        script.main([*argv, "--category", "Books", "--output_dir", str(tmp_path / "b")])
    with pytest.raises(SirenError, match=r"made with use_long_history False .* asks for True"):
        script.main([*argv, "--use_long_history", "true", "--output_dir", str(tmp_path / "c")])
    assert not any((tmp_path / name).exists() for name in "abc")
    script.main([*argv, "--max_history", "10", "--output_dir", str(tmp_path / "d")])  # what it was built with
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["args"]["max_history"] == 10
    kind = tmp_path / "not_stage2"
    _stage2_folder(verl_dir, kind)
    (kind / "manifest.json").write_text(json.dumps({"script": "inference_train_ddp.py", "args": {}}))
    with pytest.raises(SirenError, match=r"was written by inference_train_ddp\.py, not preprocess_grpo\.py"):
        script.main(["--data_path", str(kind), "--model", str(tiny_model_dir), "--output_dir", str(tmp_path / "e")])


def test_a_second_run_is_refused_and_a_killed_runs_staging_folder_removed(tiny_model_dir, verl_dir, tmp_path, capsys):
    from other_runs import run_holding, run_killed_while_writing

    out = tmp_path / "hidden"
    script = load_script("preprocess_hidden.py")
    argv = ["--data_path", str(verl_dir), "--model", str(tiny_model_dir), "--output_dir", str(out), "--limit", "2"]
    with run_holding(out) as pid:
        with pytest.raises(SirenError, match=rf"output folder {out} is in use by another run \(process {pid}"):
            script.main(argv)
    # kill -9 during the final write leaves .hidden.staging-*: the next run removes it and says so
    killed = run_killed_while_writing(out, "train")
    assert [p.name[:16] for p in tmp_path.iterdir() if p.name.startswith(".hidden.staging-")] == [".hidden.staging-"]
    script.main(argv)
    err = capsys.readouterr().err
    assert f"took over the lock of {out} from process {killed}" in err and "removed 1 staging folder(s)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hidden"]
    assert (out / "dataset_dict.json").is_file()
