"""siren.cot and siren.distributed without a model: 4a file types, 4a's manifest checked by 4b, resume
fingerprints, fixed batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from siren import SirenError
from siren.cot import (
    MASK_NAME,
    RESULTS_NAME,
    check_resume_settings,
    check_thinking_model,
    file_sha256,
    load_mask,
    load_thinking,
    resume_settings,
    save_mask,
)
from siren.distributed import batches, my_batches

GOOD_ROW = {"index": 0, "user_id": "u1", "parent_asin": "i1", "label": 4.0, "reasoning": "<think>x</think>",
            "correct": True}


def write_thinking(folder: Path, bad_line: dict | None = None) -> Path:
    rows = [{**GOOD_ROW, "index": i} for i in range(3)]
    if bad_line is not None:
        rows[2] = {**rows[2], **bad_line}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULTS_NAME
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_thinking_accepts_string_or_null_reasoning(tmp_path):
    path = write_thinking(tmp_path, {"reasoning": None, "label": 3})
    rows = load_thinking(path)
    assert [r["reasoning"] for r in rows] == ["<think>x</think>", "<think>x</think>", None]


@pytest.mark.parametrize("field, value, message", [
    ("reasoning", 7, "`reasoning` must be a string or null, got the number 7"),
    ("reasoning", ["<think>", "</think>"], "`reasoning` must be a string or null, got a list"),
    ("reasoning", {"text": "x"}, "`reasoning` must be a string or null, got an object"),
    ("index", "2", "`index` must be a whole number, got the string '2'"),
    ("index", True, "`index` must be a whole number, got true"),
    ("index", 2.0, "`index` must be a whole number, got the number 2.0"),
    ("label", True, "`label` must be a number, got true"),
    ("label", "4", "`label` must be a number, got the string '4'"),
    ("label", None, "`label` must be a number, got null"),
    ("correct", 1, "`correct` must be true or false, got the number 1"),
    ("correct", "true", "`correct` must be true or false, got the string 'true'"),
    ("user_id", 17, "`user_id` must be a non-empty string, got the number 17"),
    ("parent_asin", "", "`parent_asin` must be a non-empty string, got the string ''"),
])
def test_load_thinking_names_file_line_and_type(tmp_path, field, value, message):
    path = write_thinking(tmp_path, {field: value})
    with pytest.raises(SirenError) as err:
        load_thinking(path)
    assert str(err.value) == f"{path}:3: {message}"


def test_check_thinking_model_compares_the_4a_manifest(tmp_path):
    record = {"path": "/models/grpo", "architecture": {"hidden_size": 64}, "weights_digest": "a" * 64}
    path = write_thinking(tmp_path / "cot")
    # No manifest, or an older one without the record: accepted, with a note saying so.
    assert "no manifest.json next to" in check_thinking_model(path, record)
    (path.parent / "manifest.json").write_text(json.dumps({"script": "inference_train_ddp.py", "counts": {}}))
    assert "records no model (an older stage 4a run)" in check_thinking_model(path, record)

    (path.parent / "manifest.json").write_text(json.dumps({"script": "inference_train_ddp.py", "model": record}))
    assert check_thinking_model(path, {**record, "path": "/elsewhere/same-weights"}) is None
    other = {**record, "path": "/models/base", "weights_digest": "b" * 64}
    with pytest.raises(SirenError, match=r"the reasoning in .*results\.jsonl was written by /models/grpo, "
                                         r"not /models/base \(weights_digest differs\)"):
        check_thinking_model(path, other)
    wider = {**record, "architecture": {"hidden_size": 128}}
    with pytest.raises(SirenError, match=r"architecture\.hidden_size: 64 there, 128 here"):
        check_thinking_model(path, wider)


def test_resume_settings_fingerprint_the_parquet_bytes_and_the_weights(tmp_path):
    parquet = tmp_path / "train.parquet"
    parquet.write_bytes(b"first build")
    model = {"path": "/m", "weights_digest": "a" * 64, "tokenizer": {"tokenizer_json_sha256": "t" * 64}}
    first = resume_settings(model=model, data_file=parquet, backend="hf", seed=0)
    assert first["data_sha256"] == file_sha256(parquet) and first["model_weights_digest"] == "a" * 64
    assert first["tokenizer_json_sha256"] == "t" * 64

    part_dir = tmp_path / "partial"
    part_dir.mkdir()
    (part_dir / "settings.json").write_text(json.dumps(first))
    assert check_resume_settings(part_dir, resume_settings(model=model, data_file=parquet, backend="hf", seed=0))

    parquet.write_bytes(b"rebuilt at the same path")  # another --max_history, another row order
    with pytest.raises(SirenError, match=r"other settings \(data_sha256: '[0-9a-f]{12}\.\.\.' -> '[0-9a-f]{12}\.\.\.'\)"):
        check_resume_settings(part_dir, resume_settings(model=model, data_file=parquet, backend="hf", seed=0))
    parquet.write_bytes(b"first build")
    retrained = {**model, "weights_digest": "b" * 64}
    with pytest.raises(SirenError, match="model_weights_digest: 'aaaaaaaaaaaa...' -> 'bbbbbbbbbbbb...'"):
        check_resume_settings(part_dir, resume_settings(model=retrained, data_file=parquet, backend="hf", seed=0))


def test_fixed_batches_do_not_depend_on_the_process_count():
    all_batches = list(batches(range(10), 4))
    assert all_batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert my_batches(all_batches, 0, 1) == list(enumerate(all_batches))
    assert my_batches(all_batches, 0, 2) == [(0, [0, 1, 2, 3]), (2, [8, 9])]
    assert my_batches(all_batches, 1, 2) == [(1, [4, 5, 6, 7])]
    assert my_batches(all_batches, 3, 4) == []  # more processes than batches: an idle process
    with pytest.raises(ValueError):
        my_batches(all_batches, 2, 2)


def test_mask_bytes_depend_only_on_the_values(tmp_path):
    """torch.save given a path stores that (random temporary) name in the archive; save_mask does not."""
    first, second = tmp_path / "a" / MASK_NAME, tmp_path / "b" / MASK_NAME
    save_mask(first, [True, False, True])
    save_mask(second, [True, False, True])
    assert first.read_bytes() == second.read_bytes()
    assert load_mask(first, 3).tolist() == [True, False, True]
