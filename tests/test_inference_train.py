"""Stage 4a (inference_train_ddp.py): result rows, part files and resume, 1 vs 2 processes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import CPU_ONLY, accelerate_launch, load_script, run_script

from siren import SirenError
from siren.cot import RESULT_FIELDS, PartWriter, check_resume_settings, merge_parts, read_parts, result_row

GEN_FLAGS = ["--limit", "12", "--max_new_tokens", "8", "--batch_size", "4"]
# The runs compared byte for byte are pinned to the CPU, also on a machine with CUDA (the 2-process
# run is gloo on CPU); one thread per process avoids oversubscription of the shared CPU (10x slower).
CPU_ONE_THREAD = {"OMP_NUM_THREADS": "1", **CPU_ONLY}


def parquet_row(index: int, label: float) -> dict:
    return {"label": label, "extra_info": {"index": index, "user_id": "u1", "parent_asin": "i1"}}


def test_result_row_correct_only_when_well_formed_and_exact():
    good = result_row(parquet_row(3, 4.0), "<think>likes dramas</think>\n<answer>4.0</answer>", 12)
    assert good["correct"] and good["valid"] and good["format_ok"]
    assert good["reasoning"] == "<think>likes dramas</think>" and good["prediction"] == 4.0
    assert list(good) == list(RESULT_FIELDS)

    wrong = result_row(parquet_row(3, 4.0), "<think>x</think><answer>5</answer>", 9)
    assert wrong["valid"] and not wrong["correct"]

    # The right number without a think block is valid but gives the teacher nothing to read.
    bare = result_row(parquet_row(3, 4.0), "<answer>4</answer>", 3)
    assert bare["valid"] and not bare["format_ok"] and not bare["correct"] and bare["reasoning"] is None

    # Out of range is not "exactly right" even though the reward clips it to the label.
    clipped = result_row(parquet_row(3, 5.0), "<think>x</think><answer>6</answer>", 3)
    assert clipped["valid"] and not clipped["correct"]

    garbage = result_row(parquet_row(0, 2.0), "\n\n\n", 8)
    assert not garbage["valid"] and garbage["prediction"] is None and garbage["generated_tokens"] == 8


def test_part_files_survive_a_torn_last_line(tmp_path):
    part_dir = tmp_path / "partial"
    writer = PartWriter(part_dir / "rank0.jsonl")
    writer.write([{**dict.fromkeys(RESULT_FIELDS), "index": 0, "response": "a"}])
    writer.close()
    with open(part_dir / "rank0.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"index": 1, "resp')  # a crash in the middle of a write
    assert sorted(read_parts(part_dir)) == [0]

    writer = PartWriter(part_dir / "rank0.jsonl")
    writer.write([{**dict.fromkeys(RESULT_FIELDS), "index": 1, "response": "b"}])
    writer.close()
    assert sorted(read_parts(part_dir)) == [0, 1]
    assert [r["response"] for r in merge_parts(part_dir, 2)] == ["a", "b"]
    with pytest.raises(SirenError, match="1 of 3 rows have no result"):
        merge_parts(part_dir, 3)


def test_resume_refuses_parts_made_with_other_settings(tmp_path):
    part_dir = tmp_path / "partial"
    assert check_resume_settings(part_dir, {"max_new_tokens": 8}) is False
    part_dir.mkdir()
    (part_dir / "settings.json").write_text(json.dumps({"max_new_tokens": 8}))
    assert check_resume_settings(part_dir, {"max_new_tokens": 8}) is True
    with pytest.raises(SirenError, match="max_new_tokens: 8 -> 16"):
        check_resume_settings(part_dir, {"max_new_tokens": 16})


@pytest.fixture(scope="module")
def reference_run(tiny_model_dir, verl_dir, tmp_path_factory) -> Path:
    """One uninterrupted single-process run, the reference for the resume and 2-process tests."""
    out = tmp_path_factory.mktemp("cot") / "ref"
    proc = run_script("inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                      "--out_dir", str(out), *GEN_FLAGS, env=CPU_ONE_THREAD)
    assert "12 invalid" in proc.stdout
    return out


@pytest.mark.slow
def test_end_to_end_single_process(reference_run, verl_dir):
    results = [json.loads(line) for line in (reference_run / "results.jsonl").read_text().splitlines()]
    parquet = pd.read_parquet(verl_dir / "train.parquet").iloc[:12]
    assert [r["index"] for r in results] == list(range(12))
    assert [r["parent_asin"] for r in results] == [info["parent_asin"] for info in parquet["extra_info"]]
    assert all(list(r) == list(RESULT_FIELDS) for r in results)
    assert all(1 <= r["generated_tokens"] <= 8 for r in results)

    mask = torch.load(reference_run / "mask.pt")
    assert mask.dtype == torch.bool and mask.tolist() == [r["correct"] for r in results]

    metrics = json.loads((reference_run / "metrics.json").read_text())
    cot = metrics["predictions"]["cot"]
    # The random tiny model writes no <answer>: every row is counted invalid, none is filled in.
    assert cot["n"] == 12 and cot["n_invalid"] == sum(not r["valid"] for r in results)
    assert cot["invalid_fill"] is None
    assert set(metrics["latency"]) == {"ms_per_sample", "samples_per_s", "generated_tokens_per_sample", "device", "n"}
    assert metrics["latency"]["n"] == 12 and metrics["latency"]["device"] == "cpu"
    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["counts"]["processes"] == 1 and manifest["category"] == "Movies"
    assert not (reference_run / "partial").exists()


@pytest.mark.slow
def test_refuses_to_overwrite_finished_outputs(reference_run, tiny_model_dir, verl_dir, capsys):
    from siren.cli import run_main

    script = load_script("inference_train_ddp.py")
    argv = ["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--out_dir", str(reference_run), *GEN_FLAGS]
    assert run_main(lambda: script.main(argv)) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_a_crash_gives_the_same_files(reference_run, tiny_model_dir, verl_dir, tmp_path):
    out = tmp_path / "resumed"
    argv = ["inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
            "--out_dir", str(out), *GEN_FLAGS]
    crashed = run_script(*argv, env={**CPU_ONE_THREAD, "SIREN_STOP_AFTER_BATCHES": "1"}, check=False)
    assert crashed.returncode != 0 and "stopped after 1 batch" in crashed.stderr
    assert not (out / "results.jsonl").exists()
    assert sorted(read_parts(out / "partial")) == [0, 1, 2, 3]
    with open(out / "partial" / "rank0.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"index": 4, "user_id": "tor')  # killed mid-write

    run_script(*argv, env=CPU_ONE_THREAD)
    assert (out / "results.jsonl").read_bytes() == (reference_run / "results.jsonl").read_bytes()
    assert torch.equal(torch.load(out / "mask.pt"), torch.load(reference_run / "mask.pt"))
    assert json.loads((out / "manifest.json").read_text())["counts"]["resumed_rows"] == 4


def test_bad_inputs_are_one_line_errors(tiny_model_dir, verl_dir, tmp_path):
    script = load_script("inference_train_ddp.py")
    no_tokenizer = tmp_path / "weights_only"
    no_tokenizer.mkdir()
    shutil.copy(tiny_model_dir / "config.json", no_tokenizer / "config.json")
    with pytest.raises(SirenError, match="holds no tokenizer"):
        script.main(["--model", str(no_tokenizer), "--data_path", str(verl_dir), "--out_dir", str(tmp_path / "a")])

    empty = tmp_path / "empty"
    empty.mkdir()
    pd.read_parquet(verl_dir / "train.parquet").iloc[:0].to_parquet(empty / "train.parquet", index=False)
    with pytest.raises(SirenError, match="the split is empty"):
        script.main(["--model", str(tiny_model_dir), "--data_path", str(empty), "--out_dir", str(tmp_path / "b")])

    with pytest.raises(SirenError, match="--batch_size"):
        script.main(["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--batch_size", "0"])

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(SirenError, match="needs the vllm package"):
            script.main(["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--backend", "vllm",
                         "--out_dir", str(tmp_path / "c")])
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))


@pytest.mark.slow
def test_two_processes_equal_one(reference_run, tiny_model_dir, verl_dir, tmp_path):
    out = tmp_path / "two"
    run_script(*accelerate_launch(2), "inference_train_ddp.py",
               "--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--out_dir", str(out), *GEN_FLAGS,
               env=CPU_ONE_THREAD)
    assert json.loads((out / "manifest.json").read_text())["counts"]["processes"] == 2
    assert (out / "results.jsonl").read_bytes() == (reference_run / "results.jsonl").read_bytes()
    assert torch.equal(torch.load(out / "mask.pt"), torch.load(reference_run / "mask.pt"))


@pytest.mark.gpu
def test_vllm_backend_end_to_end(tiny_model_dir, verl_dir, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "vllm"
    run_script("inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
               "--out_dir", str(out), "--backend", "vllm", "--dtype", "float32", *GEN_FLAGS)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in results] == list(range(12))
    assert all(list(r) == list(RESULT_FIELDS) and 1 <= r["generated_tokens"] <= 8 for r in results)
    assert torch.load(out / "mask.pt").tolist() == [r["correct"] for r in results]
