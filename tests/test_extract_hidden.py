"""Stage 4b (extract_last_hidden_ddp.py): teacher contexts, left padding, streaming shards, merge."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU_ONLY, accelerate_launch, load_script, run_in_process, run_script, torch_on_one_thread

from siren import SirenError
from siren.cot_results import result_row
from siren.prompts import answer_tag_ids
from siren.teacher_contexts import align_contexts, teacher_text
from siren.teacher_hidden import NpyRows, encode_left_padded, last_token_hidden, merge_hidden_shards, shard_paths
from siren.verl_data import load_split_rows

N_ROWS = 14
# The reference run is compared with the in-test model in float32 (rtol 1e-4): it runs in this process,
# on its device, on one thread. The 2-process runs are pinned to the CPU, also on a machine with CUDA
# (gloo), one thread per process (no oversubscription of the shared CPU).
CPU_ONE_THREAD = {"OMP_NUM_THREADS": "1", **CPU_ONLY}


def synthetic_response(position: int, label: float) -> str:
    """Reasoning of very different lengths; every third answer wrong; row 5 has no </think>."""
    if position == 5:
        return "the model rambled and never closed its thought"
    reasoning = " ".join(["The user rated similar dramas highly."] * (1 + 7 * (position % 4)))
    answer = label if position % 3 else 1.0 + label % 5
    return f"<think>\n{reasoning}\n</think>\n\n<answer>{answer:.1f}</answer>"


@pytest.fixture(scope="module")
def thinking_dir(verl_dir, tmp_path_factory) -> Path:
    """A stage 4a output written by hand, since the random tiny model never writes reasoning."""
    rows = load_split_rows(verl_dir, "train", N_ROWS)
    out = tmp_path_factory.mktemp("thinking")
    results = [result_row(row, synthetic_response(i, row["label"]), 20) for i, row in enumerate(rows)]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    torch.save(torch.tensor([r["correct"] for r in results], dtype=torch.bool), out / "mask.pt")
    return out


def test_left_padding_puts_answer_last_for_mixed_lengths(tiny_model_dir, verl_dir):
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = load_split_rows(verl_dir, "train", 4)
    texts = [teacher_text(tokenizer, row, synthetic_response(i, row["label"])) for i, row in enumerate(rows)]
    input_ids, attention_mask, position_ids = encode_left_padded(tokenizer, texts)
    lengths = attention_mask.sum(1).tolist()
    assert len(set(lengths)) == 4  # really mixed
    tail = answer_tag_ids(tokenizer)
    for row in range(4):
        last_real = int(attention_mask[row].nonzero().max())
        assert last_real == input_ids.shape[1] - 1
        assert input_ids[row, -len(tail):].tolist() == tail
        assert position_ids[row, -1].item() == lengths[row] - 1
    assert tokenizer.decode(tail) == "<answer>"


def test_padded_batch_gives_each_row_its_unpadded_hidden_state(tiny_model_dir, verl_dir, one_thread):
    from siren.modeling import load_causal_lm
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    rows = load_split_rows(verl_dir, "train", 3)
    texts = [teacher_text(tokenizer, row, synthetic_response(i + 1, row["label"])) for i, row in enumerate(rows)]
    batched = last_token_hidden(model, *encode_left_padded(tokenizer, texts))
    assert batched.shape == (3, model.config.num_hidden_layers, model.config.hidden_size)
    for i, text in enumerate(texts):
        alone = last_token_hidden(model, *encode_left_padded(tokenizer, [text]))
        torch.testing.assert_close(batched[i], alone[0], rtol=1e-4, atol=1e-5)


def test_reasoning_ending_in_a_spaced_think_close_still_aligns(tiny_model_dir, verl_dir):
    """" </think>" tokenizes otherwise than the student's "</think>"; only `<answer>`'s tokens count."""
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = load_split_rows(verl_dir, "train", 1) * 2  # one prompt, two reasonings
    thinking = [{"reasoning": "<think>likes dramas </think>"}, {"reasoning": "<think>likes dramas</think>"}]
    alignment = align_contexts(tokenizer, rows, thinking, [0, 1])
    assert alignment.positions == [0, 1] and alignment.unaligned == []
    assert alignment.lengths[0] == alignment.lengths[1] + 1  # the space is a token of its own here


def test_unaligned_rows_are_counted_and_left_out(tiny_model_dir, verl_dir, monkeypatch):
    import siren.teacher_contexts as contexts
    import siren.teacher_hidden as hidden
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = load_split_rows(verl_dir, "train", 3)
    thinking = [{"reasoning": f"<think>row {i}</think>"} for i in range(3)]
    real_teacher_text = contexts.teacher_text
    # Row 1's context ends in "<answer" (no ">"): its last tokens are not those of `<answer>`.
    monkeypatch.setattr(contexts, "teacher_text", lambda tok, row, reasoning: real_teacher_text(tok, row, reasoning)
                        .removesuffix(">") if reasoning == "<think>row 1</think>" else real_teacher_text(tok, row, reasoning))
    selection = contexts.select_teacher_rows(thinking)
    kept, lengths = contexts.align_teacher_rows(tokenizer, rows, thinking, selection)
    assert kept.positions == [0, 2] and len(lengths) == 2
    assert kept.counts()["unaligned"] == 1 and "1 unaligned" in kept.summary()
    with pytest.raises(SirenError, match=r"rows \[1\]: the teacher context does not end in the tokens of '<answer>'"):
        hidden.extract_teacher_states(None, tokenizer, rows, thinking, [0, 1, 2], state=None, parts_dir=Path("."),
                                      batch_size=2)
    monkeypatch.setattr(contexts, "teacher_text", lambda tok, row, reasoning: "no tag here")
    with pytest.raises(SirenError, match="none of the 3 selected teacher contexts ends in the tokens of '<answer>'"):
        contexts.align_teacher_rows(tokenizer, rows, thinking, selection)


def test_a_student_context_without_the_answer_tokens_is_refused(tiny_model_dir, verl_dir, monkeypatch):
    import siren.teacher_contexts as contexts
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    rows = load_split_rows(verl_dir, "train", 1)
    monkeypatch.setattr(contexts, "student_text", lambda tok, row: "a prompt without the tag")
    with pytest.raises(SirenError, match="answer-only context of .* does not end in the tokens of '<answer>'"):
        align_contexts(tokenizer, rows, [{"reasoning": "<think>x</think>"}], [0])


def test_shards_merge_in_dataset_order(tmp_path):
    selected = [0, 2, 3, 5, 8, 9, 11]
    world, row_shape = 3, (2, 5)
    expected = np.stack([np.full(row_shape, float(i), dtype=np.float32) for i in selected])
    for rank in range(world):
        hidden, index = shard_paths(tmp_path, rank)
        mine = selected[rank::world]
        np.save(index, np.asarray(mine, dtype=np.int64))
        shard = NpyRows(hidden, len(mine), row_shape, np.float32, create=True)
        for slot in reversed(range(len(mine))):  # out of order, as the length sort writes them
            shard.write(slot, np.full((1, *row_shape), float(mine[slot]), dtype=np.float32))
        shard.close()
    out = tmp_path / "merged.npy"
    # 40 bytes per row: chunks of 3 rows exercise the chunk boundaries.
    merge_hidden_shards(tmp_path, world, selected, row_shape, np.float32, out, chunk_bytes=3 * 40)
    merged = np.load(out, mmap_mode="r")
    assert merged.shape == (7, 2, 5)
    np.testing.assert_array_equal(merged, expected)


def extract_argv(model: Path, verl_dir: Path, thinking: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--data_path", str(verl_dir), "--thinking_path", str(thinking),
            "--limit", str(N_ROWS), "--out_dir", str(out), "--batch_size", "4", *extra]


@pytest.fixture(scope="module")
def one_process_run(tiny_model_dir, verl_dir, thinking_dir, tmp_path_factory) -> Path:
    """One run in this process, in float32 on one thread: the reference for the end-to-end checks."""
    out = tmp_path_factory.mktemp("hidden") / "one"
    with torch_on_one_thread():
        proc = run_in_process("extract_last_hidden_ddp.py",
                              *extract_argv(tiny_model_dir, verl_dir, thinking_dir, out, "--dtype", "float32"))
    assert "1 without reasoning" in proc.stdout
    # The hand-written 4a folder has no manifest: accepted, with a note.
    assert "note: no manifest.json next to" in proc.stdout
    return out


@pytest.mark.slow
def test_end_to_end_single_process(one_process_run, tiny_model_dir, verl_dir, thinking_dir, one_thread):
    from siren.modeling import load_causal_lm
    from siren.tokenization import load_tokenizer

    hidden = np.load(one_process_run / "teacher_hidden.npy", mmap_mode="r")
    index = np.load(one_process_run / "teacher_index.npy")
    assert index.dtype == np.int64 and index.tolist() == [i for i in range(N_ROWS) if i != 5]
    assert hidden.shape == (N_ROWS - 1, 2, 64) and hidden.dtype == np.float32

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    rows = load_split_rows(verl_dir, "train", N_ROWS)
    thinking = [json.loads(line) for line in (thinking_dir / "results.jsonl").read_text().splitlines()]
    for k in (0, 6, len(index) - 1):
        position = int(index[k])
        text = teacher_text(tokenizer, rows[position], thinking[position]["reasoning"])
        alone = last_token_hidden(model, *encode_left_padded(tokenizer, [text]))[0].numpy()
        np.testing.assert_allclose(hidden[k], alone, rtol=1e-4, atol=1e-5)

    counts = json.loads((one_process_run / "manifest.json").read_text())["counts"]
    assert counts["extracted"] == N_ROWS - 1 and counts["no_reasoning"] == 1 and counts["layers"] == 2
    assert not (one_process_run / ".hidden_parts").exists()


@pytest.mark.slow
def test_only_correct_keeps_the_masked_rows(tiny_model_dir, verl_dir, thinking_dir, tmp_path, one_thread):
    script = load_script("extract_last_hidden_ddp.py")
    out = tmp_path / "correct"
    script.main(extract_argv(tiny_model_dir, verl_dir, thinking_dir, out, "--only_correct", "--save_dtype", "float16"))
    mask = torch.load(thinking_dir / "mask.pt").tolist()
    index = np.load(out / "teacher_index.npy").tolist()
    assert index == [i for i, keep in enumerate(mask) if keep] and 5 not in index and 3 not in index
    assert np.load(out / "teacher_hidden.npy").dtype == np.float16


def test_thinking_that_does_not_match_the_parquet_is_an_error(tiny_model_dir, verl_dir, thinking_dir, tmp_path):
    script = load_script("extract_last_hidden_ddp.py")
    lines = (thinking_dir / "results.jsonl").read_text().splitlines()

    short = tmp_path / "short"
    short.mkdir()
    (short / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(SirenError, match=f"has {N_ROWS - 1} rows but the parquet split has {N_ROWS}"):
        script.main(extract_argv(tiny_model_dir, verl_dir, short, tmp_path / "o1"))

    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "results.jsonl").write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    with pytest.raises(SirenError, match="row 0 is"):
        script.main(extract_argv(tiny_model_dir, verl_dir, swapped, tmp_path / "o2"))

    no_mask = tmp_path / "no_mask"
    no_mask.mkdir()
    (no_mask / "results.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SirenError, match="missing correctness mask"):
        script.main(extract_argv(tiny_model_dir, verl_dir, no_mask, tmp_path / "o3", "--only_correct"))

    no_tokenizer = tmp_path / "weights_only"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(SirenError, match="holds no tokenizer"):
        script.main(extract_argv(no_tokenizer, verl_dir, thinking_dir, tmp_path / "o4"))
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))


@pytest.mark.slow
def test_refuses_to_overwrite_finished_outputs(one_process_run, tiny_model_dir, verl_dir, thinking_dir, capsys):
    from siren.cli import run_main

    script = load_script("extract_last_hidden_ddp.py")
    argv = extract_argv(tiny_model_dir, verl_dir, thinking_dir, one_process_run)
    assert run_main(lambda: script.main(argv)) == 2
    assert "already exists" in capsys.readouterr().err


class OneOfSeveralProcesses:
    """The parts of accelerate's PartialState that extract_teacher_states uses, for process `rank`
    of `world` run one after the other in this test process."""

    def __init__(self, rank: int, world: int) -> None:
        self.process_index, self.num_processes, self.is_main_process = rank, world, rank == 0

    def wait_for_everyone(self) -> None:
        pass


@pytest.mark.parametrize("world, batch_size", [(2, 4), (3, 2), (4, 8)])  # (4, 8): processes without rows
def test_any_process_count_gives_identical_states(tiny_model_dir, verl_dir, thinking_dir, tmp_path, one_thread,
                                                  world, batch_size):
    from siren.cot_results import load_thinking
    from siren.modeling import load_causal_lm
    from siren.teacher_contexts import select_teacher_rows
    from siren.teacher_hidden import extract_teacher_states, write_teacher_files
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    rows = load_split_rows(verl_dir, "train", N_ROWS)
    thinking = load_thinking(thinking_dir / "results.jsonl")
    selected = select_teacher_rows(thinking).positions

    def run(processes: int) -> bytes:
        parts, out = tmp_path / f"parts{processes}", tmp_path / f"out{processes}"
        parts.mkdir()
        out.mkdir()
        for rank in range(processes):
            extraction = extract_teacher_states(model, tokenizer, rows, thinking, selected, parts_dir=parts,
                                                state=OneOfSeveralProcesses(rank, processes), batch_size=batch_size)
        hidden_path, _ = write_teacher_files(out, extraction, rows)
        return hidden_path.read_bytes()

    assert run(world) == run(1)


def test_the_authors_readme_command_parses():
    script = load_script("extract_last_hidden_ddp.py")
    authors = script.parse_args(["--model", "ckpt/GRPO", "--thinking_path", "results_train/Movies",
                                 "--data_path", "data/Movies/verl/max@10-long@True", "--batch_size", "16",
                                 "--out_dir", "results_hidden/Movies"])
    assert authors.model == "ckpt/GRPO" and authors.output_dir == "results_hidden/Movies" and authors.batch_size == 16
    assert authors.split == "train" and authors.thinking_path == "results_train/Movies"
    assert script.parse_args(["--model_path", "m", "--thinking_path", "t", "--data_path", "d"]).model == "m"


def test_reasoning_that_is_not_a_string_is_a_one_line_error(tiny_model_dir, verl_dir, thinking_dir, tmp_path):
    """Issue 14: a 4a file whose `reasoning` is a number or a list names file:line (was a traceback)."""
    script = load_script("extract_last_hidden_ddp.py")
    lines = (thinking_dir / "results.jsonl").read_text().splitlines()
    for name, value in (("number", 7), ("list", ["<think>", "</think>"])):
        bad = tmp_path / name
        bad.mkdir()
        row = {**json.loads(lines[2]), "reasoning": value}
        (bad / "results.jsonl").write_text("\n".join([*lines[:2], json.dumps(row), *lines[3:]]) + "\n")
        with pytest.raises(SirenError, match=rf"{name}/results\.jsonl:3: `reasoning` must be a string or null, got "):
            script.main(extract_argv(tiny_model_dir, verl_dir, bad, tmp_path / f"out_{name}"))
        assert not (tmp_path / f"out_{name}").exists()


@pytest.mark.slow
def test_refuses_reasoning_written_by_another_model(tiny_model_dir, verl_dir, thinking_dir, tmp_path, capsys,
                                                    one_thread):
    """4a's manifest names the model that wrote the reasoning; 4b's --model must be that model.
    Also: --overwrite replaces this stage's files and nothing else in the folder."""
    from siren.modeling import model_record

    script = load_script("extract_last_hidden_ddp.py")
    cot = shutil.copytree(thinking_dir, tmp_path / "cot")
    record = model_record(tiny_model_dir)
    manifest = {"script": "inference_train_ddp.py", "model": {**record, "path": "/ckpt/GRPO_Movies_step100",
                                                              "weights_digest": "0" * 64}}
    (cot / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "out"
    with pytest.raises(SirenError, match=r"the reasoning in .*results\.jsonl was written by /ckpt/GRPO_Movies_step100, "
                                         r"not .* \(weights_digest differs\)"):
        script.main(extract_argv(tiny_model_dir, verl_dir, cot, out))
    assert not out.exists()

    (cot / "manifest.json").write_text(json.dumps({**manifest, "model": record}))
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    script.main(extract_argv(tiny_model_dir, verl_dir, cot, out))
    assert "note:" not in capsys.readouterr().out
    written = json.loads((out / "manifest.json").read_text())
    assert written["model"]["weights_digest"] == record["weights_digest"]  # stage 5 compares it with its --model
    first = (out / "teacher_hidden.npy").read_bytes()
    script.main(extract_argv(tiny_model_dir, verl_dir, cot, out, "--overwrite"))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt", "teacher_hidden.npy",
                                                     "teacher_index.npy"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "teacher_hidden.npy").read_bytes() == first


@pytest.mark.slow
def test_disk_full_during_the_merge_leaves_no_finished_looking_file(tiny_model_dir, verl_dir, thinking_dir, tmp_path,
                                                                    monkeypatch, one_thread):
    import siren.teacher_hidden

    real_merge = siren.teacher_hidden.merge_hidden_shards

    def merge_then_fail(*args, **kwargs):
        real_merge(*args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(siren.teacher_hidden, "merge_hidden_shards", merge_then_fail)
    script = load_script("extract_last_hidden_ddp.py")
    out = tmp_path / "full"
    with pytest.raises(SirenError, match="No space left on device; nothing was kept"):
        script.main(extract_argv(tiny_model_dir, verl_dir, thinking_dir, out))
    leftovers = sorted(p.name for p in out.iterdir() if p.is_file()) if out.exists() else []
    assert leftovers == [], leftovers  # no teacher_hidden.npy, no temporary file, no manifest
    assert not out.exists()  # nor the shards, nor the output folder made for them


# --------------------------------------------------------------------------------------------------
# Issue 20: stage 4a's manifest against the flags; outputs never where the inputs are; one line last


def _stage4a_copy(thinking_dir: Path, folder: Path, verl_dir: Path, **args) -> Path:
    """A copy of the hand-written 4a output with the manifest stage 4a writes (its args and the
    sha256 of the parquet it read)."""
    from siren.cot_results import file_sha256
    from siren.io import write_manifest

    shutil.copytree(thinking_dir, folder)
    write_manifest(folder, script="inference_train_ddp.py", args={"split": "train", "limit": N_ROWS, **args},
                   extra={"data_sha256": file_sha256(verl_dir / "train.parquet")})
    return folder


def test_a_stage4a_run_of_another_split_limit_or_parquet_is_refused(tiny_model_dir, verl_dir, thinking_dir, tmp_path):
    script = load_script("extract_last_hidden_ddp.py")
    base = ["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--limit", str(N_ROWS)]
    on_test = _stage4a_copy(thinking_dir, tmp_path / "on_test", verl_dir, split="test")
    with pytest.raises(SirenError, match=r"--thinking_path .*on_test/results\.jsonl was made with split 'test' .* asks "
                                         r"for 'train' \(--split\)"):
        script.main([*base, "--thinking_path", str(on_test), "--out_dir", str(tmp_path / "a")])
    limited = _stage4a_copy(thinking_dir, tmp_path / "limited", verl_dir, limit=6)
    with pytest.raises(SirenError, match=r"made with limit 6 .* asks for 14 \(--limit\)"):
        script.main([*base, "--thinking_path", str(limited), "--out_dir", str(tmp_path / "b")])
    # The same rows with other prompts (e.g. another max@N folder): the reasoning answered other prompts.
    other_prompts = tmp_path / "max@3-long@False"
    shutil.copytree(verl_dir, other_prompts)
    frame = __import__("pandas").read_parquet(other_prompts / "train.parquet")
    frame["ability"] = "other"
    frame.to_parquet(other_prompts / "train.parquet", index=False)
    matching = _stage4a_copy(thinking_dir, tmp_path / "matching", verl_dir)
    with pytest.raises(SirenError, match=r"was written for another parquet file than .*max@3-long@False/train\.parquet"):
        script.main([*base[:2], "--data_path", str(other_prompts), "--limit", str(N_ROWS), "--thinking_path",
                     str(matching), "--out_dir", str(tmp_path / "c")])
    with pytest.raises(SirenError, match=r"\(--output_dir\) holds this stage's input .*results\.jsonl"):
        script.main([*base, "--thinking_path", str(matching), "--out_dir", str(matching), "--overwrite"])
    assert not any((tmp_path / name).exists() for name in "abc")


@pytest.mark.slow
def test_a_failure_of_two_processes_ends_with_its_one_line(tmp_path):
    """Issue 20: with 2 processes, 4b's one-line error was followed by accelerate's ChildFailedError
    traceback; `python -m siren.launch` (accelerate launch's flags) prints the line last."""
    args = ["extract_last_hidden_ddp.py", "--model", str(tmp_path / "m"), "--data_path", str(tmp_path),
            "--thinking_path", str(tmp_path / "missing")]
    line = f"error: no thinking file at {tmp_path / 'missing'} (run inference_train_ddp.py first)"
    wrapped = run_script("-m", "siren.launch", *accelerate_launch(2)[2:], *args, env=CPU_ONE_THREAD, check=False)
    assert wrapped.returncode == 2 and wrapped.stderr.strip().splitlines()[-1] == line, wrapped.stderr
    assert "Traceback" not in wrapped.stderr
    plain = run_script(*accelerate_launch(2), *args, env=CPU_ONE_THREAD, check=False)
    assert plain.returncode != 0 and "ChildFailedError" in plain.stderr  # what the wrapper leaves out
    assert line in plain.stderr  # the launcher's report names the line too (the error file run_main writes)
