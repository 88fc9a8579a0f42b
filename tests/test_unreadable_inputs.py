"""Issue 20: damaged inputs that were tracebacks are one-line errors, in every stage that reads
them: a 4c folder with an .arrow file cut short or a split without rows (stages 5 and 6, through
siren.answer_only_data), a parquet row whose fields have the wrong type (4a, 4c, 6, through
siren.verl_data.load_split_rows), a model.safetensors cut short (4a, 6, through
siren.modeling.check_weight_files)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_refused, run_in_process
from stage_inputs import build_ao_dataset

from siren import SirenError

REBUILD = "rebuild it with preprocess_hidden.py"


@pytest.fixture(scope="module")
def ao_folder(verl_dir, tiny_model_dir, tmp_path_factory) -> Path:
    from siren.tokenization import load_tokenizer

    return build_ao_dataset(verl_dir, load_tokenizer(tiny_model_dir), tmp_path_factory.mktemp("ao") / "hidden",
                            (6, 4, 4), tiny_model_dir)


# --------------------------------------------------------------------------------------------------
# The 4c DatasetDict


def _arrow_file(folder: Path, split: str) -> Path:
    return next((folder / split).glob("*.arrow"))


def _cut_arrow(folder: Path, split: str) -> None:
    arrow = _arrow_file(folder, split)
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])


def _no_rows(folder: Path, split: str) -> None:
    from datasets import load_from_disk

    saved = load_from_disk(str(folder))
    saved[split] = saved[split].select([])
    staging = folder.with_name(folder.name + ".new")
    saved.save_to_disk(str(staging))
    shutil.rmtree(folder / split)
    shutil.move(str(staging / split), str(folder / split))
    shutil.rmtree(staging)


def _data_file_gone(folder: Path, split: str) -> None:
    _arrow_file(folder, split).unlink()


def _state_not_save_to_disk(folder: Path, split: str) -> None:
    (folder / split / "state.json").write_text(json.dumps(["not", "a", "state"]))


DAMAGES = {
    "arrow cut short": (_cut_arrow, r"/{split}: cannot read the saved split \((ArrowInvalid|OSError): .*\); " + REBUILD),
    "no rows": (_no_rows, r"/{split}: the split has no rows; " + REBUILD),
    "data file gone": (_data_file_gone, r"/{split}: cannot read the saved split \(FileNotFoundError: .*\); " + REBUILD),
    "state.json not save_to_disk's": (_state_not_save_to_disk,
                                      r"/{split}/state\.json lists no data files \(not written by save_to_disk\); "
                                      + REBUILD),
}


def _damaged(ao_folder: Path, tmp_path: Path, damage: str, split: str) -> Path:
    folder = shutil.copytree(ao_folder, tmp_path / "hidden")
    DAMAGES[damage][0](folder, split)
    return folder


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_4c_split_is_named_with_what_is_wrong(ao_folder, tmp_path, damage):
    from siren.answer_only_data import load_ao_dataset

    folder = _damaged(ao_folder, tmp_path, damage, "test")
    with pytest.raises(SirenError) as err:
        load_ao_dataset(folder, ("test",))
    assert str(err.value).startswith(f"{folder}/test")
    assert re.search(DAMAGES[damage][1].format(split="test"), str(err.value)), str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["arrow cut short", "no rows"])
def test_stage6_names_a_damaged_4c_split_in_one_line(ao_folder, tiny_model_dir, tmp_path, damage):
    folder = _damaged(ao_folder, tmp_path, damage, "test")
    message = assert_refused(run_in_process("inference_ao_ddp.py", "--model", str(tiny_model_dir), "--data_path",
                                            str(folder), "--output_dir", str(tmp_path / "out"), check=False))
    assert message.startswith(str(folder)) and re.search(DAMAGES[damage][1].format(split="test"), message), message
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("damage", "split"), [("arrow cut short", "train"), ("no rows", "valid")])
def test_stage5_names_a_damaged_4c_split_in_one_line(ao_folder, tiny_model_dir, tmp_path, damage, split):
    """Stage 5 reads the 4c folder before the mask and the teacher states (here: paths that do not exist)."""
    folder = _damaged(ao_folder, tmp_path, damage, split)
    message = assert_refused(run_in_process(
        "train_hidden_mask.py", "--model", str(tiny_model_dir), "--data_path", str(folder), "--teacher_hidden_path",
        str(tmp_path / "none"), "--teacher_mask_path", str(tmp_path / "none.pt"), "--output_dir", str(tmp_path / "out"),
        "--use_cpu", "true", "--report_to", "none", check=False))
    assert re.search(DAMAGES[damage][1].format(split=split), message), message
    assert not (tmp_path / "out").exists()


def test_a_damaged_split_the_stage_does_not_read_does_not_stop_it(ao_folder, tiny_model_dir, tmp_path):
    from siren.answer_only_data import load_ao_dataset, load_ao_rows
    from siren.tokenization import load_tokenizer

    folder = _damaged(ao_folder, tmp_path, "arrow cut short", "train")
    tokenizer = load_tokenizer(tiny_model_dir)
    rows = load_ao_rows(folder, "test", tokenizer)
    assert [row["index"] for row in rows] == [0, 1, 2, 3]
    with pytest.raises(SirenError, match=r"/train: cannot read the saved split"):
        load_ao_dataset(folder)  # stage 5 reads train and valid
    (folder / "dataset_dict.json").write_text("[]")
    with pytest.raises(SirenError, match=r"dataset_dict\.json: no list of splits"):
        load_ao_rows(folder, "test", tokenizer)


# --------------------------------------------------------------------------------------------------
# Fields of a verl parquet row


def _with_row(verl_dir: Path, target: Path, split_stem: str, position: int, change) -> Path:
    target.mkdir(parents=True)
    for stem in ("train", "val", "test"):
        frame = pd.read_parquet(verl_dir / f"{stem}.parquet").iloc[:6]
        if stem == split_stem:
            records = frame.to_dict("records")
            change(records[position])
            frame = pd.DataFrame(records)
        frame.to_parquet(target / f"{stem}.parquet", index=False)
    return target


def _ground_truth(value):
    return lambda row: row.update(reward_model={**row["reward_model"], "ground_truth": value})


def _extra_info(**values):
    return lambda row: row.update(extra_info={**row["extra_info"], **values})


@pytest.mark.parametrize(("change", "message"), [
    (_ground_truth("abc"), r"row 2: reward_model\.ground_truth must be a rating from 1 to 5 \(e\.g\. \"4\.0\"\), "
                           r"got 'abc'"),
    (_ground_truth("7.0"), r"row 2: reward_model\.ground_truth must be a rating from 1 to 5 .*got '7\.0'"),
    (_ground_truth("nan"), r"row 2: reward_model\.ground_truth must be a rating from 1 to 5 .*got 'nan'"),
    (_ground_truth(""), r"row 2: reward_model\.ground_truth must be a rating from 1 to 5 .*got ''"),
    (_extra_info(index=None), r"row 2: extra_info must hold index, user_id and parent_asin, got \{"),
    (lambda row: row.update(extra_info=None), r"row 2: extra_info must hold index, user_id and parent_asin, got None"),
    (_extra_info(index=5), r"row 2 has extra_info\.index 5; rows must be in index order"),
    (lambda row: row.update(prompt=None), r"row 2: prompt must be a list of chat messages, got None"),
    (lambda row: row.update(prompt=[]), r"row 2: prompt must be a non-empty list of \{role, content\} string messages"),
])
def test_a_parquet_row_of_the_wrong_type_is_named(verl_dir, tmp_path, change, message):
    from siren.verl_data import load_split_rows

    folder = _with_row(verl_dir, tmp_path / "max@10-long@False", "test", 2, change)
    with pytest.raises(SirenError, match=rf"test\.parquet: {message}"):
        load_split_rows(folder, "test")
    assert len(load_split_rows(folder, "test", limit=2)) == 2  # rows past --limit are not read


@pytest.mark.slow
@pytest.mark.parametrize(("script", "split_stem"), [
    ("inference_train_ddp.py", "train"),  # 4a reads train by default
    ("preprocess_hidden.py", "val"),      # 4c reads all three
    ("inference_ao_ddp.py", "test"),      # 6 reads test by default
])
def test_a_non_numeric_ground_truth_is_one_line_in_every_stage(verl_dir, tiny_model_dir, tmp_path, script,
                                                               split_stem):
    folder = _with_row(verl_dir, tmp_path / "max@10-long@False", split_stem, 3, _ground_truth("four"))
    message = assert_refused(run_in_process(script, "--model", str(tiny_model_dir), "--data_path", str(folder),
                                            "--output_dir", str(tmp_path / "out"), check=False))
    assert message == (f"{folder / (split_stem + '.parquet')}: row 3: reward_model.ground_truth must be a rating "
                       "from 1 to 5 (e.g. \"4.0\"), got 'four'")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# Weights cut short


def test_stage6_names_a_model_safetensors_cut_short(ao_folder, tiny_model_dir, tmp_path):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    message = assert_refused(run_in_process("inference_ao_ddp.py", "--model", str(model), "--data_path", str(ao_folder),
                                            "--output_dir", str(tmp_path / "out"), check=False))
    assert message.startswith(f"{weights} is cut short: its tensors need ")
    assert message.endswith("; the weights are damaged or were not copied whole")
    assert not (tmp_path / "out").exists()
