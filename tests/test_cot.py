"""siren.cot_inference and siren.distributed without a model: 4a file types, 4a's manifest checked by 4b, resume
fingerprints, fixed batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from siren import SirenError
from siren.cot_inference import check_resume_settings, resume_settings
from siren.cot_results import (
    MASK_NAME,
    RESULTS_NAME,
    check_thinking_model,
    file_sha256,
    load_mask,
    load_thinking,
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


def _fake_model(folder: Path) -> Path:
    """A model folder's identity files (no loadable weights are needed to fingerprint it)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
                                                    "transformers_version": "5.9.0"}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2], "transformers_version": "5.9.0"}))
    (folder / "model.safetensors").write_bytes(b"\x00" * 4096)
    (folder / "tokenizer.json").write_text('{"model": "bpe"}')
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    return folder


def _with_a_finished_row(part_dir: Path, settings: dict) -> Path:
    part_dir.mkdir(parents=True, exist_ok=True)
    (part_dir / "settings.json").write_text(json.dumps(settings))
    (part_dir / "rank0.jsonl").write_text(json.dumps({"index": 0}) + "\n")
    return part_dir


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}, indent=4))


def test_resume_settings_fingerprint_the_parquet_bytes_and_the_whole_model(tmp_path):
    """Issue 20: every file that changes what the model computes or when it stops is in the one
    fingerprint the resume compares; re-saving metadata (transformers_version, spacing) is not."""
    from siren.modeling import model_record

    parquet = tmp_path / "train.parquet"
    parquet.write_bytes(b"first build")
    model = _fake_model(tmp_path / "model")

    def settings() -> dict:
        return resume_settings(model=model_record(model), data_file=parquet, backend="hf", seed=0)

    first = settings()
    assert first["data_sha256"] == file_sha256(parquet) and first["weights_digest"] == model_record(model)["weights_digest"]
    assert {"config_sha256", "generation_config_sha256", "vocabulary_sha256", "chat_template_sha256"} <= set(first)
    part_dir = _with_a_finished_row(tmp_path / "partial", first)
    assert check_resume_settings(part_dir, settings())

    parquet.write_bytes(b"rebuilt at the same path")  # another --max_history, another row order
    with pytest.raises(SirenError, match=r"other settings \(data_sha256: '[0-9a-f]{12}\.\.\.' -> '[0-9a-f]{12}\.\.\.'\)"):
        check_resume_settings(part_dir, settings())
    parquet.write_bytes(b"first build")

    # A newer transformers re-saving the same settings (other version, spacing, key order) is the same model.
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**dict(reversed(config.items())), "transformers_version": "5.10.0"}))
    assert check_resume_settings(part_dir, settings())

    originals = {name: (model / name).read_bytes() for name in
                 ("config.json", "generation_config.json", "model.safetensors", "chat_template.jinja")}
    edits = {
        "config_sha256": lambda: _edit_json(model / "config.json", rope_theta=1e6),
        "generation_config_sha256": lambda: _edit_json(model / "generation_config.json", eos_token_id=[2, 7]),
        "weights_digest": lambda: (model / "model.safetensors").write_bytes(b"\x01" * 4096),
        "chat_template_sha256": lambda: (model / "chat_template.jinja").write_text("{{ messages }}!"),
    }
    for key, edit in edits.items():
        edit()
        with pytest.raises(SirenError, match=rf"other settings \({key}: "):
            check_resume_settings(part_dir, settings())
        for name, data in originals.items():
            (model / name).write_bytes(data)
    _edit_json(model / "config.json", rms_norm_eps=1e-5)
    with pytest.raises(SirenError, match=r"other settings \(config_sha256: "):
        check_resume_settings(part_dir, settings())
    (model / "generation_config.json").unlink()  # a file that appears or disappears counts too
    with pytest.raises(SirenError, match=r"config_sha256: .*generation_config_sha256: '[0-9a-f]{12}\.\.\.' -> None"):
        check_resume_settings(part_dir, settings())


def test_a_folder_without_finished_rows_is_nothing_to_resume(tmp_path):
    """Issue 20: settings.json (or an empty part file) left by a run that failed before its first
    batch does not block the corrected rerun, whatever settings it records."""
    part_dir = tmp_path / "partial"
    assert check_resume_settings(part_dir, {"max_new_tokens": 8}) is False
    part_dir.mkdir()
    (part_dir / "settings.json").write_text(json.dumps({"max_new_tokens": 16, "weights_digest": "old"}))
    (part_dir / "rank0.jsonl").write_text('{"index": 0, "resp')  # a torn first line: no finished row
    assert check_resume_settings(part_dir, {"max_new_tokens": 8}) is False
    (part_dir / "rank0.jsonl").write_text('{"index": 0}\n')
    with pytest.raises(SirenError, match="max_new_tokens: 16 -> 8"):
        check_resume_settings(part_dir, {"max_new_tokens": 8})
    (part_dir / "settings.json").unlink()
    with pytest.raises(SirenError, match="holds part files but no settings.json"):
        check_resume_settings(part_dir, {"max_new_tokens": 8})


def test_longest_first_batches_share_lengths_and_do_not_depend_on_the_process_count():
    from siren.distributed import longest_first_batches

    lengths = [5, 9, 7, 9, 1, 3]
    every = longest_first_batches(lengths, 4, 0, 1)
    assert every == [(0, [1, 3, 2, 0]), (1, [5, 4])]  # longest first, ties in row order
    assert longest_first_batches(lengths, 4, 0, 2) == [every[0]]
    assert longest_first_batches(lengths, 4, 1, 2) == [every[1]]
    assert longest_first_batches([], 4, 0, 1) == []


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


def _numpy_mask(path: Path) -> None:
    import numpy as np

    with open(path, "wb") as handle:
        np.save(handle, np.array([True, False, True]))


def _torch_saved_numpy(path: Path) -> None:
    import numpy as np
    import torch

    torch.save(np.array([True, False, True]), path)


def _pickled(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps([True, False, True]))


def _cut_short(path: Path) -> None:
    save_mask(path, [True, False, True])
    path.write_bytes(path.read_bytes()[:40])


@pytest.mark.parametrize(("write", "kind"), [
    (_numpy_mask, "a numpy array saved with np.save"),
    (_torch_saved_numpy, "a torch.save archive of other Python objects (a pickled numpy array?)"),
    (_pickled, "a plain Python pickle"),
    (_cut_short, "a zip archive cut short"),
    (lambda path: path.write_text("1,0,1\n"), "bytes of another format (text?)"),
    (lambda path: path.write_bytes(b""), "nothing (an empty file)"),
])
def test_a_mask_torch_cannot_read_is_named_for_what_it_is(tmp_path, capsys, write, kind):
    """Issue 20: torch's own message advises weights_only=False (running the file's code) and
    "will likely succeed"; the refusal says what the file holds and who writes mask.pt."""
    path = tmp_path / MASK_NAME
    write(path)
    with pytest.raises(SirenError) as err:
        load_mask(path, 3)
    message = str(err.value)
    assert message == (f"{path} holds {kind}, not a tensor saved with torch.save; "
                       "mask.pt is written by inference_train_ddp.py (rerun it)")
    assert "weights_only" not in message + capsys.readouterr().err
