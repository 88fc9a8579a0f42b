"""Stages 4a, 4b, 5 and 6 on several machines, simulated on one host: two `accelerate launch`
processes with `--num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1 --num_processes 2`
(one process per "machine", gloo on the CPU); the shared-folder check (siren.distributed) and the
docs' multi-node commands.

These are the tests that several processes write the bytes one process writes (stages 4a, 4b, 6)
and that stage 5 saves once: the same ranks and world size as `--num_processes 2` on one machine,
plus the machine boundary. A two-process launch on one machine is run by the stages' own refusal
tests (test_inference_train, test_extract_hidden).

A machine that cannot see the others' files is simulated by running each machine in its own
working folder with the same relative --output_dir: the same command, two filesystems.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CPU_ONLY, REPO, free_port, load_script

from siren import SirenError
from siren.distributed import SHARED_WAIT_ENV, check_shared_folder, missing_ranks, unshared_message

# One thread per process (the two "machines" share the CPU); a refusal waits 1 s, not 30, for the
# marker it will never see.
ENV = {"OMP_NUM_THREADS": "1", SHARED_WAIT_ENV: "1", **CPU_ONLY}
MACHINES = 2
UNSHARED = "is not one folder shared by every machine: rank 0 cannot see the files of rank(s) 1"


def launch_flags(machine_rank: int, port: int, num_processes: int = MACHINES) -> list[str]:
    """The multi-node `accelerate launch` flags of docs/pipeline.md, for machine `machine_rank`."""
    return ["--multi_gpu", "--num_machines", str(MACHINES), "--machine_rank", str(machine_rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--num_processes", str(num_processes),
            "--mixed_precision", "no", "--dynamo_backend", "no"]


def run_on_two_machines(script: str, *args: str, cwds: tuple[Path, Path] | None = None,
                        timeout: int = 600) -> list[subprocess.CompletedProcess]:
    """Start `script` on both "machines" at once (each its own accelerate launcher) and wait for both."""
    import os

    port = free_port()
    env = {**os.environ, **ENV}
    procs = [subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", *launch_flags(rank, port),
                               str(REPO / script), *args], cwd=cwds[rank] if cwds else REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in range(MACHINES)]
    done = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def check_ok(machines: list[subprocess.CompletedProcess]) -> None:
    for rank, proc in enumerate(machines):
        assert proc.returncode == 0, f"machine {rank}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error: ")]


def in_process(script: str, argv: list[str]) -> None:
    """The one-process reference, run in this test process (no interpreter start-up)."""
    load_script(script).main(argv)


# --------------------------------------------------------------------------------------------------
# The check itself, without processes


class OneProcess:
    num_processes, process_index, is_main_process = 1, 0, True

    def wait_for_everyone(self) -> None:
        pass


def test_missing_ranks_and_the_message(tmp_path):
    paths = [tmp_path / f"rank{rank}" for rank in range(3)]
    paths[1].touch()
    assert missing_ranks(paths) == [0, 2]
    assert missing_ranks(paths[1:2]) == []
    message = unshared_message(tmp_path / "partial", [0, 2])
    assert "\n" not in message and "rank(s) 0, 2" in message and str(tmp_path / "partial") in message


def test_one_process_has_nothing_to_check(tmp_path):
    check_shared_folder(tmp_path / "parts", OneProcess())
    assert not (tmp_path / "parts").exists()  # nothing made, nothing written


class RankZeroOfTwo(OneProcess):
    """Rank 0 of a two-process run whose rank 1 writes elsewhere: its markers never show up here."""

    num_processes = 2


def test_the_parts_folder_of_4b_is_checked_before_any_work(tmp_path, monkeypatch):
    """extract_last_hidden_ddp.py's scratch folder runs the shared-folder check (the collective
    part replaced by rank 0's own answer): refused, and the folders made for it are removed."""
    import siren.distributed
    from siren.teacher_hidden import scratch_folder

    monkeypatch.setenv(SHARED_WAIT_ENV, "0")
    monkeypatch.setattr(siren.distributed, "from_main", lambda state, value: value)
    parts = tmp_path / "out" / ".hidden_parts"
    with pytest.raises(SirenError, match=re.escape(f"{parts} {UNSHARED}")):
        with scratch_folder(parts, RankZeroOfTwo()):
            pytest.fail("the block ran")
    assert list(tmp_path.iterdir()) == []


def test_the_merge_of_4b_refuses_a_missing_shard(tmp_path, monkeypatch):
    """Rank 0 sees rank 0's and rank 2's shards but not rank 1's: named, nothing written."""
    from siren.teacher_hidden import NpyRows, merge_hidden_shards, shard_paths

    monkeypatch.setenv(SHARED_WAIT_ENV, "0")
    for rank in (0, 2):
        hidden, index = shard_paths(tmp_path, rank)
        np.save(index, np.asarray([rank], dtype=np.int64))
        NpyRows(hidden, 1, (2, 3), np.float32, create=True).close()
    out = tmp_path / "merged.npy"
    with pytest.raises(SirenError, match=re.escape(f"{tmp_path} {UNSHARED}")):
        merge_hidden_shards(tmp_path, 3, [0, 1, 2], (2, 3), np.float32, out)
    assert not out.exists()


def test_the_zero2_config_becomes_a_two_machine_launch():
    """`--num_machines` (and the other per-machine values) on the command line override the file's."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args([
        "--config_file", str(REPO / "config_Zero2.yaml"), "--num_machines", "2", "--machine_rank", "1",
        "--main_process_ip", "10.0.0.1", "--main_process_port", "29500", "--num_processes", "16",
        "train_hidden_mask.py"])
    args, defaults, _ = _validate_launch_command(args)
    assert (args.num_machines, args.machine_rank, args.num_processes) == (2, 1, 16)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    command, _ = prepare_deepspeed_cmd_env(args)
    # "standard": torchrun on each machine (no pdsh/hostfile command), 8 processes here, machine 1 of 2
    assert command is None
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "8")
    assert args.rdzv_endpoint == "10.0.0.1:29500"


def _multinode_section() -> str:
    text = (REPO / "docs" / "pipeline.md").read_text()
    return text.split("## Several machines", 1)[1].split("\n## ", 1)[0]


def test_the_docs_commands_are_multi_node_launches_that_parse(tmp_path):
    """Every accelerate launch of the section names the four per-machine flags and parses; the srun
    example's inner command too, with Slurm's variables filled in, and its script flags exist."""
    from accelerate.commands.launch import launch_command_parser
    from test_readme import check_command, doc_commands

    section = tmp_path / "section.md"
    section.write_text(_multinode_section())
    commands = doc_commands(section)
    srun = [c for c in commands if c.startswith("srun ")]
    assert len(srun) == 1 and "$SLURM_NODEID" in srun[0] and "$SLURM_NNODES" in srun[0]
    inner = shlex.split(srun[0])[3]
    filled = (inner.replace("$((SLURM_NNODES * SLURM_GPUS_ON_NODE))", "16").replace("$SLURM_NNODES", "2")
              .replace("$SLURM_NODEID", "1").replace("$MAIN_IP", "10.0.0.1").replace("\\\n", " "))
    launches = [c for c in commands if c.startswith("accelerate launch")] + [filled]
    scripts = set()
    for command in launches:
        words = shlex.split(command)[2:]
        for flag in ("--num_machines", "--machine_rank", "--main_process_ip", "--main_process_port", "--num_processes"):
            assert flag in words, command
        parsed = launch_command_parser().parse_args(words)
        assert parsed.num_machines == 2 and parsed.num_processes == 16
        scripts.add(parsed.training_script)
        check_command(command)  # the script's own flags exist
    assert scripts == {"inference_train_ddp.py", "extract_last_hidden_ddp.py", "train_hidden_mask.py",
                       "inference_ao_ddp.py"}


# --------------------------------------------------------------------------------------------------
# Two machines on one host against one process


@pytest.mark.slow
def test_stage_4a_on_two_machines_equals_one_process(tiny_model_dir, verl_dir, tmp_path):
    flags = ["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--limit", "6", "--max_new_tokens", "4",
             "--batch_size", "2"]
    in_process("inference_train_ddp.py", [*flags, "--out_dir", str(tmp_path / "one")])
    machines = run_on_two_machines("inference_train_ddp.py", *flags, "--out_dir", str(tmp_path / "two"))
    check_ok(machines)
    one, two = tmp_path / "one", tmp_path / "two"
    assert json.loads((two / "manifest.json").read_text())["counts"]["processes"] == 2
    assert (two / "results.jsonl").read_bytes() == (one / "results.jsonl").read_bytes()
    assert (two / "mask.pt").read_bytes() == (one / "mask.pt").read_bytes()
    assert "wrote" in machines[0].stdout and "wrote" not in machines[1].stdout
    assert not (two / "partial").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # the lock, taken once by rank 0, is released


def thinking_folder(verl_dir: Path, folder: Path, n_rows: int) -> Path:
    """A stage 4a folder written by hand (the random tiny model writes no reasoning)."""
    from siren.cot_results import result_row
    from siren.verl_data import load_split_rows

    folder.mkdir(parents=True)
    rows = load_split_rows(verl_dir, "train", n_rows)
    results = [result_row(row, f"<think>\n{'The user likes dramas. ' * (1 + 5 * (i % 3))}\n</think>\n\n"
                               f"<answer>{row['label']:.1f}</answer>", 20) for i, row in enumerate(rows)]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    torch.save(torch.tensor([r["correct"] for r in results], dtype=torch.bool), folder / "mask.pt")
    return folder


@pytest.mark.slow
def test_stage_4b_on_two_machines_equals_one_process(tiny_model_dir, verl_dir, tmp_path):
    """Issue 14: with per-process batches, 1 and 2 processes differed by up to 1.9e-6 (other padding);
    every row is now computed in the same batch whatever the process count: identical bytes."""
    thinking = thinking_folder(verl_dir, tmp_path / "thinking", 6)
    flags = ["--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--thinking_path", str(thinking),
             "--limit", "6", "--batch_size", "2"]
    in_process("extract_last_hidden_ddp.py", [*flags, "--out_dir", str(tmp_path / "one")])
    machines = run_on_two_machines("extract_last_hidden_ddp.py", *flags, "--out_dir", str(tmp_path / "two"))
    check_ok(machines)
    one, two = tmp_path / "one", tmp_path / "two"
    assert json.loads((two / "manifest.json").read_text())["counts"]["processes"] == 2
    for name in ("teacher_hidden.npy", "teacher_index.npy"):
        assert (two / name).read_bytes() == (one / name).read_bytes()
    assert not (two / ".hidden_parts").exists()


@pytest.mark.slow
def test_stage_6_on_two_machines_equals_one_process(tiny_model_dir, verl_dir, tmp_path):
    from stage_inputs import build_ao_dataset

    from siren.tokenization import load_tokenizer

    data = build_ao_dataset(verl_dir, load_tokenizer(tiny_model_dir), tmp_path / "hidden", (2, 2, 6), tiny_model_dir)
    flags = ["--model", str(tiny_model_dir), "--data_path", str(data), "--batch_size", "2"]
    in_process("inference_ao_ddp.py", [*flags, "--out_dir", str(tmp_path / "one")])
    machines = run_on_two_machines("inference_ao_ddp.py", *flags, "--out_dir", str(tmp_path / "two"))
    check_ok(machines)

    def predictions(folder: Path) -> list[tuple]:
        rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
        return [(r["index"], r["prediction"], r["expected_rating"], r["probs"]) for r in rows]

    # The batches are formed once for any process count (siren.answer_only.ao_batches): same batch-mates,
    # same padding, so the same numbers, not just numbers within BATCHING_TOLERANCE.
    assert len(predictions(tmp_path / "one")) == 6
    assert predictions(tmp_path / "two") == predictions(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["latency"]["num_processes"] == 2


@pytest.mark.slow
def test_stage_5_on_two_machines_trains_two_steps_and_saves_once_from_rank_0(tiny_model_dir, verl_dir, tmp_path):
    """5 masked-in rows, 2 per device on 2 processes: ceil(5 / 4) = 2 batches each, so one epoch is
    2 optimizer steps, printed before training; one checkpoint (step 2) in the shared folder, read
    back by both ranks at the end; the outputs written once, by machine 0."""
    from stage_inputs import build_stage5_inputs

    inputs = build_stage5_inputs(verl_dir, tiny_model_dir, tmp_path / "inputs", n_train=10, mask_every=2, n_valid=2,
                                 n_test=2)
    run = tmp_path / "run"
    machines = run_on_two_machines(
        "train_hidden_mask.py", "--model", str(tiny_model_dir), "--data_path", str(inputs["instructions"]),
        "--teacher_hidden_path", str(inputs["teacher"]), "--teacher_mask_path", str(inputs["mask"]),
        "--output_dir", str(run), "--training_ratio", "1.0", "--num_train_epochs", "1",
        "--per_device_train_batch_size", "2", "--per_device_eval_batch_size", "2", "--eval_steps", "2",
        "--save_steps", "2", "--logging_steps", "1")
    check_ok(machines)
    assert ("training: 2 optimizer steps (1 epoch(s) of 2; 5 rows, 2 per device x 2 process(es) x 1 accumulation = "
            "4 rows per step), 1 of them warm-up") in machines[0].stdout
    assert machines[0].stdout.count(f"wrote {run}/adapter") == 1
    assert "training:" not in machines[1].stdout and "wrote" not in machines[1].stdout
    assert sorted(p.name for p in run.iterdir()) == ["adapter", "checkpoints", "manifest.json", "merged",
                                                     "train_log.jsonl"]
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["processes"] == 2 and manifest["counts"]["optimizer_steps"] == 2
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "align_loss" in e] == [1, 2]


# --------------------------------------------------------------------------------------------------
# A machine that writes where machine 0 cannot see


def _machine_folders(tmp_path: Path) -> tuple[Path, Path]:
    folders = (tmp_path / "machine0", tmp_path / "machine1")
    for folder in folders:
        folder.mkdir()
    return folders


@pytest.mark.slow
def test_a_folder_the_machines_do_not_share_is_refused(tiny_model_dir, verl_dir, tmp_path):
    """Stage 4a with each machine in its own working folder and `--output_dir out`: machine 1's parts
    would land where machine 0 cannot read them (the old code generated every row, then failed to
    merge with "2 of 4 rows have no result"). Both machines stop before generating, with the one
    line naming rank 1; nothing is merged or left behind on either machine. (4b runs the same check
    on its scratch folder: test_the_parts_folder_of_4b_is_checked_before_any_work.)"""
    cwds = _machine_folders(tmp_path)
    machines = run_on_two_machines("inference_train_ddp.py", "--model", str(tiny_model_dir), "--data_path",
                                   str(verl_dir), "--limit", "4", "--batch_size", "2", "--max_new_tokens", "2",
                                   "--out_dir", "out", cwds=cwds)
    for rank, proc in enumerate(machines):
        assert proc.returncode != 0
        assert error_lines(proc) == [f"error: out/partial {UNSHARED}, so their parts cannot be merged; give every "
                                     "machine the same output path on a shared filesystem (NFS, Lustre, ...)"], (
            f"machine {rank}:\n{proc.stderr[-3000:]}")
    assert [list(folder.iterdir()) for folder in cwds] == [[], []]
