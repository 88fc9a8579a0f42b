"""train_hidden_mask.py end to end on the tiny model (CPU), and its refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_script
from stage_inputs import build_stage5_inputs

SCRIPT = "train_hidden_mask.py"
FAST = ["--max_steps", "4", "--eval_steps", "2", "--save_steps", "2", "--logging_steps", "1",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "3",
        "--learning_rate", "1e-2", "--warmup_steps", "0", "--training_ratio", "1.0"]


@pytest.fixture(scope="module")
def inputs(verl_dir, tiny_model_dir, tmp_path_factory):
    # Every second row masked in: 5 of 10 train rows have a correct teacher.
    return build_stage5_inputs(verl_dir, tiny_model_dir, tmp_path_factory.mktemp("stage5-script"),
                               n_train=10, mask_every=2, n_valid=4, n_test=6)


def _args(inputs, model_dir, out_dir, *extra):
    return [SCRIPT, "--model", str(model_dir), "--instruction_path", str(inputs["instructions"]),
            "--teacher_hidden_path", str(inputs["teacher"]), "--teacher_mask_path", str(inputs["mask"]),
            "--output_dir", str(out_dir), *FAST, *extra]


@pytest.fixture(scope="module")
def trained(inputs, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ao-run") / "AO_tiny"
    proc = run_script(*_args(inputs, tiny_model_dir, out, "--peft", "KV"))
    return out, proc


@pytest.mark.slow
def test_end_to_end_writes_adapter_merged_log_and_manifest(trained):
    out, proc = trained
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "base_model.json").is_file()
    assert (out / "merged" / "config.json").is_file() and (out / "merged" / "tokenizer_config.json").is_file()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train_entries = [e for e in log if "align_loss" in e]
    assert len(train_entries) == 4
    assert {"lm_loss", "cos_layer_1", "cos_layer_2"} <= set(train_entries[0])
    assert any("eval_rating_rmse" in e for e in log)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["masked_in_rows"] == 5 and manifest["counts"]["trained_rows"] == 5
    assert manifest["lora_target_modules"] == ["k_proj", "v_proj"]
    assert manifest["best_checkpoint"] is not None
    assert "masked in" in proc.stdout and "wrote" in proc.stdout


@pytest.mark.slow
def test_only_lora_kv_weights_differ_from_the_base(trained, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    out, _ = trained
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(str(out / "merged")).state_dict()
    assert base.keys() == merged.keys()
    differing = {name for name in base if not torch.equal(base[name], merged[name])}
    kv = {name for name in base if name.endswith(("k_proj.weight", "v_proj.weight"))}
    assert differing == kv  # every K/V projection moved, nothing else did


@pytest.mark.slow
def test_refuses_to_overwrite(trained, inputs, tiny_model_dir):
    out, _ = trained
    proc = run_script(*_args(inputs, tiny_model_dir, out), check=False)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr and "--overwrite" in proc.stderr


def test_help_shows_defaults():
    proc = run_script(SCRIPT, "--help")
    help_text = " ".join(proc.stdout.split())  # argparse wraps lines
    for text in ("--kd_ratio", "default: 1.0", "--loss_type", "cosine", "--peft", "KV", "--training_ratio",
                 "default: 0.1", "constant_with_warmup", "default: 2048"):
        assert text in help_text


def _expect_error(args, pattern: str, out_dir: Path):
    proc = run_script(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and pattern in proc.stderr, proc.stderr
    assert not (out_dir / "adapter").exists() and not (out_dir / "manifest.json").exists()


@pytest.mark.slow
def test_teacher_hidden_size_mismatch(inputs, tiny_model_dir, tmp_path):
    bad = tmp_path / "teacher"
    bad.mkdir()
    np.save(bad / "teacher_hidden.npy", np.zeros((10, 2, 32), dtype=np.float32))
    args = _args(inputs, tiny_model_dir, tmp_path / "out")
    args[args.index("--teacher_hidden_path") + 1] = str(bad)
    _expect_error(args, "2 layers x hidden size 32, but the model has 2 layers x hidden size 64", tmp_path / "out")


@pytest.mark.slow
def test_teacher_row_count_mismatch(inputs, tiny_model_dir, tmp_path):
    bad = tmp_path / "teacher"
    bad.mkdir()
    np.save(bad / "teacher_hidden.npy", np.zeros((7, 2, 64), dtype=np.float32))
    args = _args(inputs, tiny_model_dir, tmp_path / "out")
    args[args.index("--teacher_hidden_path") + 1] = str(bad / "teacher_hidden.npy")
    _expect_error(args, "has 7 rows but the training split has 10 rows", tmp_path / "out")


@pytest.mark.slow
def test_mask_of_the_wrong_length(inputs, tiny_model_dir, tmp_path):
    torch.save(torch.ones(11, dtype=torch.bool), tmp_path / "mask.pt")
    args = _args(inputs, tiny_model_dir, tmp_path / "out")
    args[args.index("--teacher_mask_path") + 1] = str(tmp_path / "mask.pt")
    _expect_error(args, "has 11 entries but the training split has 10 rows", tmp_path / "out")


def test_bad_flags(inputs, tiny_model_dir, tmp_path):
    _expect_error(_args(inputs, tiny_model_dir, tmp_path / "out", "--kd_ratio", "1.5"), "--kd_ratio must be in [0, 1]",
                  tmp_path / "out")
    _expect_error(_args(inputs, tiny_model_dir, tmp_path / "out", "--save_steps", "3"), "multiple of --eval_steps",
                  tmp_path / "out")


@pytest.mark.slow
def test_inference_loads_the_merged_model_and_the_adapter_alike(trained, inputs, tiny_model_dir, tmp_path):
    out, _ = trained
    common = ["--data_path", str(inputs["instructions"]), "--batch_size", "3"]
    run_script("inference_ao_ddp.py", "--model", str(out / "merged"), "--out_dir", str(tmp_path / "merged"), *common)
    run_script("inference_ao_ddp.py", "--model", str(tiny_model_dir), "--adapter", str(out / "adapter"),
               "--out_dir", str(tmp_path / "adapter"), *common)
    merged, adapted = ([json.loads(line) for line in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
                       for name in ("merged", "adapter"))
    assert [p["prediction"] for p in merged] == [p["prediction"] for p in adapted]
    for a, b in zip(merged, adapted, strict=True):
        assert a["expected_rating"] == pytest.approx(b["expected_rating"], abs=1e-4)
