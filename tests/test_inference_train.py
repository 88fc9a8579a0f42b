"""Stage 4a (inference_train_ddp.py): result rows, part files and resume, 1 vs 2 processes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import (
    CPU_ONLY,
    accelerate_launch,
    assert_refused,
    in_process_device,
    load_script,
    run_in_process,
    run_script,
    torch_on_one_thread,
)

from siren import SirenError
from siren.cot_inference import PartWriter, check_resume_settings, merge_parts, read_parts
from siren.cot_results import RESULT_FIELDS, file_sha256, result_row

GEN_FLAGS = ["--limit", "12", "--max_new_tokens", "8", "--batch_size", "4", "--dtype", "float32"]
# The runs compared byte for byte run in this process on one thread (the same device and reduction
# order for all of them); the runs that need a process of their own are pinned to the CPU on one
# thread (gloo; no oversubscription of the shared CPU, 10x slower).
CPU_ONE_THREAD = {"OMP_NUM_THREADS": "1", **CPU_ONLY}


def crash_after_batches(monkeypatch, n: int) -> None:
    """Stop the run after each process wrote `n` batches to its part file, as a crash would."""
    import siren.cot_inference

    real_write = siren.cot_inference.PartWriter.write
    written = []

    def write_then_crash(self, rows):
        real_write(self, rows)
        written.append(1)
        if len(written) >= n:
            raise SystemExit(f"stopped after {len(written)} batch(es)")

    monkeypatch.setattr(siren.cot_inference.PartWriter, "write", write_then_crash)


def first_batch(model_dir: Path, verl_dir: Path, limit: int, size: int = 4) -> list[int]:
    """The rows of 4a's first batch: the `size` longest chat prompts of the first `limit` train
    rows (ties in row order), sorted."""
    from siren.prompts import chat_prompt_text
    from siren.tokenization import load_tokenizer
    from siren.verl_data import load_split_rows

    tokenizer = load_tokenizer(model_dir)
    lengths = [len(tokenizer(chat_prompt_text(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"])
               for row in load_split_rows(verl_dir, "train", limit)]
    return sorted(sorted(range(limit), key=lambda p: (-lengths[p], p))[:size])


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
    writer = PartWriter(part_dir / "rank0.jsonl", {"max_new_tokens": 8})
    writer.write([{**dict.fromkeys(RESULT_FIELDS), "index": 0}])  # the settings go with the first rows
    writer.close()
    assert json.loads((part_dir / "settings.json").read_text()) == {"max_new_tokens": 8}
    assert check_resume_settings(part_dir, {"max_new_tokens": 8}) is True
    with pytest.raises(SirenError, match="max_new_tokens: 8 -> 16"):
        check_resume_settings(part_dir, {"max_new_tokens": 16})


@pytest.fixture(scope="module")
def reference_run(tiny_model_dir, verl_dir, tmp_path_factory) -> Path:
    """One uninterrupted single-process run, the reference for the resume and 2-process tests."""
    out = tmp_path_factory.mktemp("cot") / "ref"
    with torch_on_one_thread():
        proc = run_in_process("inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                              "--out_dir", str(out), *GEN_FLAGS)
    assert "12 invalid" in proc.stdout
    return out


@pytest.mark.slow
def test_end_to_end_single_process(reference_run, tiny_model_dir, verl_dir):
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
    # The authors' scoring (invalid = 5.0) sits beside it, with the same invalid count.
    authors = metrics["predictions"]["cot_invalid_as_5"]
    assert authors["invalid_fill"] == 5.0 and authors["n_invalid"] == cot["n_invalid"] and authors["mae"] is not None
    latency = metrics["latency"]
    assert {"ms_per_sample", "samples_per_s", "generated_tokens_per_sample", "ms_per_token", "device", "n", "engine",
            "batch_size", "dtype", "warmup_seconds", "warmup_rows", "includes_warmup"} == set(latency)
    # The first batch (4 rows) is the warm-up: timed on the other 8, reported apart.
    assert latency["warmup_rows"] == 4 and latency["n"] == 8 and not latency["includes_warmup"]
    assert latency["device"] == in_process_device() and latency["engine"] == "hf-dynamic-cache"
    assert latency["batch_size"] == 4 and latency["dtype"] == "float32"
    manifest = json.loads((reference_run / "manifest.json").read_text())
    assert manifest["counts"]["processes"] == 1 and manifest["category"] == "Movies"
    assert not (reference_run / "partial").exists()
    # Stage 4b compares this record with its --model.
    from siren.modeling import model_record

    assert manifest["model"]["weights_digest"] == model_record(tiny_model_dir)["weights_digest"]
    assert manifest["model"]["architecture"]["hidden_size"] == 64
    assert manifest["data_sha256"] == file_sha256(verl_dir / "train.parquet")


@pytest.mark.slow
def test_static_cache_writes_the_same_results(reference_run, tiny_model_dir, verl_dir, tmp_path, one_thread):
    """transformers' static KV cache (compiled decode on a GPU) and the prompt padding it brings
    change how the CoT is computed, not what is written."""
    out = tmp_path / "static"
    run_in_process("inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                   "--output_dir", str(out), "--cache_implementation", "static", *GEN_FLAGS)
    assert (out / "results.jsonl").read_bytes() == (reference_run / "results.jsonl").read_bytes()
    # mask.pt holds no temporary file name, so two runs with the same rows give the same bytes.
    assert (out / "mask.pt").read_bytes() == (reference_run / "mask.pt").read_bytes()
    assert json.loads((out / "metrics.json").read_text())["latency"]["engine"] == "hf-static-cache"
    refused = run_in_process("inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                         "--output_dir", str(tmp_path / "x"), "--backend", "vllm", "--cache_implementation", "static",
                         check=False)
    assert_refused(refused, "--cache_implementation applies to --backend hf")


@pytest.mark.slow
def test_refuses_to_overwrite_finished_outputs(reference_run, tiny_model_dir, verl_dir, capsys):
    from siren.cli import run_main

    script = load_script("inference_train_ddp.py")
    argv = ["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--out_dir", str(reference_run), *GEN_FLAGS]
    assert run_main(lambda: script.main(argv)) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_a_crash_gives_the_same_files(reference_run, tiny_model_dir, verl_dir, tmp_path, monkeypatch,
                                                   one_thread):
    out = tmp_path / "resumed"
    argv = ["inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
            "--out_dir", str(out), *GEN_FLAGS]
    script = load_script("inference_train_ddp.py")
    with monkeypatch.context() as patch:
        crash_after_batches(patch, 1)
        with pytest.raises(SystemExit, match="stopped after 1 batch"):
            script.main(argv[1:])
    assert not (out / "results.jsonl").exists()
    longest = first_batch(tiny_model_dir, verl_dir, 12)  # the 4 longest prompts, not rows 0-3
    assert sorted(read_parts(out / "partial")) == longest != [0, 1, 2, 3]
    torn = next(p for p in range(12) if p not in longest)
    with open(out / "partial" / "rank0.jsonl", "a", encoding="utf-8") as handle:
        handle.write(f'{{"index": {torn}, "user_id": "tor')  # killed mid-write

    run_in_process(*argv)  # the rerun needs no process of its own: the crash above was in this one too
    assert (out / "results.jsonl").read_bytes() == (reference_run / "results.jsonl").read_bytes()
    assert torch.equal(torch.load(out / "mask.pt"), torch.load(reference_run / "mask.pt"))
    assert json.loads((out / "manifest.json").read_text())["counts"]["resumed_rows"] == 4


def test_bad_inputs_are_one_line_errors(tiny_model_dir, verl_dir, tmp_path, capsys):
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

    with pytest.raises(SystemExit) as stop:  # argparse: one line, exit status 2
        script.main(["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--batch_size", "0"])
    assert stop.value.code == 2 and "--batch_size: must be at least 1" in capsys.readouterr().err

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(SirenError, match="needs the vllm package"):
            script.main(["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--backend", "vllm",
                         "--out_dir", str(tmp_path / "c")])
    assert not any((tmp_path / name).exists() for name in ("a", "b", "c"))


@pytest.mark.parametrize("flag, value", [("--temperature", "nan"), ("--temperature", "inf"), ("--top_p", "nan")])
def test_sampling_numbers_that_are_not_finite_are_one_line(flag, value, verl_dir, tmp_path):
    """Issue 20: `--temperature nan` passed the `temperature < 0` check and ran greedy (exit 0)."""
    out = tmp_path / "out"
    proc = run_in_process("inference_train_ddp.py", "--model", str(tmp_path / "no-model"), "--data_path", str(verl_dir),
                          "--output_dir", str(out), flag, value, check=False)
    assert_refused(proc, f"argument {flag}: must be a finite number, got {value}", only_line=True)
    assert not out.exists()


def test_the_authors_readme_command_parses():
    script = load_script("inference_train_ddp.py")
    authors = script.parse_args(["--model_path", "ckpt/GRPO_Movies_step100", "--data_path", "data/Movies/verl/x"])
    canonical = script.parse_args(["--model", "ckpt/GRPO_Movies_step100", "--data_path", "data/Movies/verl/x"])
    assert vars(authors) == vars(canonical)
    assert authors.model == "ckpt/GRPO_Movies_step100" and authors.split == "train" and authors.output_dir is None
    assert script.parse_args(["--model", "m", "--data_path", "d", "--out_dir", "o"]).output_dir == "o"
    assert script.parse_args(["--model", "m", "--data_path", "d", "--split", "val"]).split == "valid"


def retrain_in_place(model_dir: Path) -> None:
    """Other weights in the same folder (as if the GRPO run was redone), same tokenizer."""
    from safetensors.torch import load_file, save_file

    weights = model_dir / "model.safetensors"
    tensors = load_file(weights)
    save_file({name: tensor + 0.01 for name, tensor in tensors.items()}, weights, metadata={"format": "pt"})


@pytest.mark.slow
def test_resume_refuses_parts_of_a_rebuilt_parquet_or_a_retrained_model(tiny_model_dir, verl_dir, tmp_path,
                                                                        monkeypatch, capsys, one_thread):
    """Issue 14: parts from before the parquet (or the model) was rebuilt at the same path are not
    mixed in; --resume false starts over on the new input."""
    script = load_script("inference_train_ddp.py")
    data = shutil.copytree(verl_dir, tmp_path / "verl")
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "out"
    argv = ["--model", str(model), "--data_path", str(data), "--out_dir", str(out), *GEN_FLAGS]

    def stop_after_one_batch():
        with monkeypatch.context() as patch:
            crash_after_batches(patch, 1)
            with pytest.raises(SystemExit, match="stopped after 1 batch"):
                script.main(argv)
        assert sorted(read_parts(out / "partial")) == first_batch(model, data, 12)

    stop_after_one_batch()
    frame = pd.read_parquet(data / "train.parquet")
    rebuilt = frame.iloc[::-1].reset_index(drop=True)  # another row order, indexes renumbered
    rebuilt["extra_info"] = [{**info, "index": i} for i, info in enumerate(rebuilt["extra_info"])]
    rebuilt.to_parquet(data / "train.parquet", index=False)
    with pytest.raises(SirenError, match=r"partial results in .* were made with other settings \(data_sha256: "):
        script.main(argv)
    assert not (out / "results.jsonl").exists()

    script.main([*argv, "--resume", "false"])
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["parent_asin"] for r in results] == [info["parent_asin"] for info in rebuilt["extra_info"][:12]]
    assert json.loads((out / "manifest.json").read_text())["counts"]["resumed_rows"] == 0

    shutil.rmtree(out)
    stop_after_one_batch()
    retrain_in_place(model)
    with pytest.raises(SirenError, match=r"other settings \(weights_digest: "):
        script.main(argv)
    assert not (out / "results.jsonl").exists()


def _edit_json(path: Path, change) -> None:
    value = json.loads(path.read_text())
    change(value)
    path.write_text(json.dumps(value, indent=2))


def _add_eos(generation_config: dict, token_id: int) -> None:
    eos = generation_config.get("eos_token_id")
    generation_config["eos_token_id"] = [*(eos if isinstance(eos, list) else [eos]), token_id]


@pytest.mark.slow
def test_resume_refuses_parts_of_a_model_whose_config_or_stopping_changed(tiny_model_dir, verl_dir, tmp_path,
                                                                          monkeypatch, one_thread):
    """Issue 20: 4a killed after one batch, then rerun after config.json changed (rope_theta,
    rms_norm_eps) or an eos id was added to generation_config.json: refused,
    never finished with the new model behind the old model's first batch. The model restored, the
    rerun resumes the parts."""
    from siren.tokenization import load_tokenizer

    script = load_script("inference_train_ddp.py")
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "out"
    argv = ["--model", str(model), "--data_path", str(verl_dir), "--out_dir", str(out), "--limit", "8",
            "--max_new_tokens", "4", "--batch_size", "4"]
    with monkeypatch.context() as patch:
        crash_after_batches(patch, 1)
        with pytest.raises(SystemExit, match="stopped after 1 batch"):
            script.main(argv)
    done = first_batch(model, verl_dir, 8)
    assert sorted(read_parts(out / "partial")) == done

    think_end = load_tokenizer(model).convert_tokens_to_ids("</think>")  # an id the model can emit
    edits = [
        ("config.json", lambda c: c["rope_parameters"].update(rope_theta=1_000_000.0), "config_sha256"),
        ("config.json", lambda c: c.update(rms_norm_eps=1e-5), "config_sha256"),
        ("generation_config.json", lambda c: _add_eos(c, think_end), "generation_config_sha256"),
    ]
    for name, change, key in edits:
        original = (model / name).read_bytes()
        _edit_json(model / name, change)
        with pytest.raises(SirenError, match=rf"partial results in .* were made with other settings \({key}: "):
            script.main(argv)
        assert not (out / "results.jsonl").exists() and sorted(read_parts(out / "partial")) == done
        (model / name).write_bytes(original)
    script.main(argv)
    assert json.loads((out / "manifest.json").read_text())["counts"]["resumed_rows"] == 4


@pytest.mark.slow
def test_a_run_that_fails_before_its_first_batch_leaves_nothing_that_blocks_the_fix(tiny_model_dir, verl_dir,
                                                                                    tmp_path, one_thread):
    """Issue 20: 4a with a broken model (weights cut short, or none) fails in one line before any
    row and leaves no partial/settings.json; the corrected rerun runs. A settings.json without
    rows, as earlier versions left, is nothing to resume either."""
    script = load_script("inference_train_ddp.py")
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "out"
    argv = ["--model", str(model), "--data_path", str(verl_dir), "--out_dir", str(out), "--limit", "4",
            "--max_new_tokens", "4", "--batch_size", "4"]
    weights = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a copy cut short
    with pytest.raises(SirenError, match=r"model\.safetensors is cut short: its tensors need \d+ bytes, the file "
                                         r"holds \d+; the weights are damaged or were not copied whole"):
        script.main(argv)
    assert not out.exists()
    (model / "model.safetensors").unlink()  # no weights at all
    with pytest.raises(SirenError, match="cannot load a model from"):
        script.main(argv)
    assert not out.exists()

    # What the old code left after the failure: settings of the broken model, no rows.
    (out / "partial").mkdir(parents=True)
    (out / "partial" / "settings.json").write_text(json.dumps({"weights_digest": None, "max_new_tokens": 4}))
    (model / "model.safetensors").write_bytes(weights)
    script.main(argv)
    assert json.loads((out / "manifest.json").read_text())["counts"]["resumed_rows"] == 0
    assert not (out / "partial").exists()


# Runs a script with writes past `limit` bytes refused by the kernel (RLIMIT_FSIZE: EFBIG, as a full
# disk refuses them with ENOSPC) and SIGXFSZ ignored so that the write fails instead of killing.
_FILE_SIZE_LIMITED = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
                      "resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); sys.argv = sys.argv[1:]; "
                      "runpy.run_path(sys.argv[0], run_name='__main__')")


@pytest.mark.slow
def test_a_full_disk_while_appending_rows_is_one_line_and_the_rerun_resumes(tiny_model_dir, verl_dir, tmp_path,
                                                                           one_thread):
    """Issue 20: the disk refusing a part-file append (here in the second batch: settings.json,
    ~1 KB, and the first batch's four rows, ~1.3 KB, fit under 2,000 bytes) is one line, exit 2, no
    traceback; the finished rows stay, and the same command then resumes from them."""
    out = tmp_path / "out"
    args = ["inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
            "--out_dir", str(out), "--limit", "8", "--max_new_tokens", "8", "--batch_size", "4"]
    env = {**CPU_ONE_THREAD, "PYTHONDONTWRITEBYTECODE": "1"}
    full = run_script("-c", _FILE_SIZE_LIMITED.format(limit=2000), *args, env=env, check=False)
    assert full.returncode == 2, full.stderr
    last = full.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot append to {out / 'partial' / 'rank0.jsonl'} (File too large); the rows "
                           "of earlier batches are kept there"), full.stderr
    assert "Traceback" not in full.stderr
    kept = read_parts(out / "partial")
    assert set(first_batch(tiny_model_dir, verl_dir, 8)) <= set(kept) and not (out / "results.jsonl").exists()

    run_in_process(*args)  # the rerun, without the file-size limit: no process of its own needed
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in results] == list(range(8))
    assert json.loads((out / "manifest.json").read_text())["counts"]["resumed_rows"] == len(kept)


@pytest.mark.slow
def test_outputs_appear_together_and_overwrite_keeps_other_files(tiny_model_dir, verl_dir, tmp_path, monkeypatch,
                                                                 one_thread):
    """Issue 14: a failure while writing leaves no results.jsonl without its mask; --overwrite
    replaces the stage's own files only."""
    import siren.cot_results

    script = load_script("inference_train_ddp.py")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--out_dir", str(out),
            "--limit", "4", "--max_new_tokens", "4", "--batch_size", "4"]

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(siren.cot_results, "save_mask", disk_full)
        with pytest.raises(SirenError, match="No space left on device; nothing was kept"):
            script.main(argv)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "partial"]  # the parts stay for a rerun

    script.main(argv)  # resumes from the parts
    names = {"manifest.json", "mask.pt", "metrics.json", "notes.txt", "results.jsonl"}
    assert {p.name for p in out.iterdir()} == names
    first = (out / "results.jsonl").read_bytes()
    script.main([*argv, "--overwrite"])
    assert {p.name for p in out.iterdir()} == names and (out / "notes.txt").read_text() == "mine"
    assert (out / "results.jsonl").read_bytes() == first
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no staging folder left beside it


def test_unusable_output_path_or_input_is_one_line(tiny_model_dir, verl_dir, tmp_path):
    """Issue 14: an output path that is a file, a folder under a file, a parquet that is not parquet."""
    script = load_script("inference_train_ddp.py")
    base = ["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--limit", "4"]
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(SirenError, match=r"output folder .*taken is an existing file, not a folder"):
        script.main([*base, "--out_dir", str(a_file)])
    with pytest.raises(SirenError, match=r"cannot create output folder .*taken/sub: .*taken is a file"):
        script.main([*base, "--out_dir", str(a_file / "sub")])

    not_parquet = tmp_path / "csv"
    not_parquet.mkdir()
    (not_parquet / "train.parquet").write_text("user_id,label\nu1,4\n")
    with pytest.raises(SirenError, match=r"train\.parquet: not a readable parquet file"):
        script.main(["--model", str(tiny_model_dir), "--data_path", str(not_parquet), "--out_dir", str(tmp_path / "o")])
    assert a_file.read_text() == "x" and not (tmp_path / "o").exists()


def test_a_second_run_into_the_folder_is_refused_at_once(tiny_model_dir, verl_dir, tmp_path):
    """Issue 20: two 4a runs into one folder; the second failed after the first deleted partial/."""
    from other_runs import run_holding

    out = tmp_path / "cot"
    (out / "partial").mkdir(parents=True)
    (out / "partial" / "rank0.jsonl").write_text('{"index": 0}\n')  # the first run's finished rows
    with run_holding(out) as pid:
        proc = run_in_process("inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                              "--out_dir", str(out), *GEN_FLAGS, "--resume", "false", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: output folder {out} is in use by another run (process {pid}")
    assert (out / "partial" / "rank0.jsonl").read_text() == '{"index": 0}\n'


def test_outputs_among_the_inputs_or_a_parquet_of_another_kind_are_refused(tiny_model_dir, verl_dir, tmp_path):
    import shutil

    from siren.io import write_manifest

    script = load_script("inference_train_ddp.py")
    parquet = tmp_path / "max@10-long@False"
    shutil.copytree(verl_dir, parquet)
    base = ["--model", str(tiny_model_dir), "--data_path", str(parquet), "--limit", "4"]
    with pytest.raises(SirenError, match=r"\(--output_dir\) holds this stage's input .*train\.parquet"):
        script.main([*base, "--out_dir", str(parquet), "--overwrite"])
    with pytest.raises(SirenError, match=r"\(--output_dir\) lies inside this stage's input .*tiny-qwen3"):
        script.main([*base, "--out_dir", str(tiny_model_dir / "cot")])
    write_manifest(parquet, script="preprocess_hidden.py", args={})
    with pytest.raises(SirenError, match=r"--data_path .* was written by preprocess_hidden\.py, not preprocess_grpo"):
        script.main([*base, "--out_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists() and not (tiny_model_dir / "cot").exists()


@pytest.mark.slow
def test_two_processes_refused_together_end_with_the_one_line(tiny_model_dir, verl_dir, tmp_path):
    """Both ranks stop on the one answer of rank 0 (no process waits on a lock, none hangs), and
    `python -m siren.launch` ends with the line, where `accelerate launch` ended with its traceback."""
    from other_runs import run_holding

    out = tmp_path / "cot"
    launch = ["-m", "siren.launch", *accelerate_launch(2)[2:]]  # the same flags, through the wrapper
    with run_holding(out) as pid:
        proc = run_script(*launch, "inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path",
                          str(verl_dir), "--out_dir", str(out), *GEN_FLAGS, env=CPU_ONE_THREAD, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert last.startswith(f"error: output folder {out} is in use by another run (process {pid}"), proc.stderr[-3000:]
    assert proc.stderr.count(last) == 3  # rank 0, rank 1 (the same answer), and the launcher's last line
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr


@pytest.mark.gpu
def test_vllm_backend_end_to_end(tiny_model_dir, verl_dir, tmp_path):
    pytest.importorskip("vllm")
    out = tmp_path / "vllm"
    run_in_process("inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
               "--out_dir", str(out), "--backend", "vllm", *GEN_FLAGS)
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["index"] for r in results] == list(range(12))
    assert all(list(r) == list(RESULT_FIELDS) and 1 <= r["generated_tokens"] <= 8 for r in results)
    assert torch.load(out / "mask.pt").tolist() == [r["correct"] for r in results]
