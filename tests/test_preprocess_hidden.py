"""Stage 4c (preprocess_hidden.py): the answer-only prompt/completion DatasetDict."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import load_script

from siren import SirenError
from siren.ao_data import completion_text, default_hidden_dir
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
    with pytest.raises(SirenError, match="pass --out_dir"):
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
    assert manifest["tokenizer"]["tokenizer_json_sha256"] and manifest["category"] == "Movies"
    assert manifest["counts"]["train"] == dataset["train"].num_rows


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
