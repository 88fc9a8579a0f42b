"""siren.outputs (a stage's outputs: checked, held by one run, committed with the manifest),
siren.manifest (an input's manifest against what the stage asks) and siren.launch (a failed
launched run ends with its one line). The stages' own cases are in their test files."""

from __future__ import annotations

import json
import re

import pytest
from other_runs import run_holding, run_killed_while_writing

from siren import SirenError
from siren.io import leftover_scratch, write_manifest
from siren.manifest import check_input_manifest
from siren.outputs import FolderLock, StageOutputs, claimed_folder, lock_path


def _outputs(folder, **kwargs) -> StageOutputs:
    return StageOutputs(folder, ["a.txt", "b"], script="stage.py", **kwargs)


def _commit(outputs: StageOutputs, text: str = "new") -> None:
    with outputs.claimed(), outputs.commit({"k": 1}) as staged:
        staged.path("a.txt").write_text(text)
        staged.path("b").mkdir()
        staged.record(counts={"rows": 2}, extra={"model": "m"})


# ---- commit: the outputs and the manifest together ------------------------------------------


def test_commit_writes_the_outputs_and_the_manifest_and_leaves_no_lock(tmp_path):
    out = tmp_path / "deep" / "out"
    _commit(_outputs(out, inputs=[]).check())
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b", "manifest.json"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["script"] == "stage.py" and manifest["args"] == {"k": 1} and manifest["counts"] == {"rows": 2}
    assert manifest["model"] == "m" and manifest["outputs"] == [str(out / "a.txt"), str(out / "b")]
    assert [p.name for p in out.parent.iterdir()] == ["out"]  # the lock file went with the run


def test_a_failed_run_leaves_nothing_and_the_declaration_is_enforced(tmp_path):
    out = tmp_path / "a" / "out"
    with pytest.raises(SirenError, match="boom"):
        with _outputs(out).check().claimed():
            raise SirenError("boom")
    assert list(tmp_path.iterdir()) == []  # no lock file, no folders made for it
    outputs = _outputs(out)
    with pytest.raises(SirenError, match="without holding it"):
        with outputs.commit({}):
            pass
    with pytest.raises(SirenError, match="c.txt is not a declared output"):
        with outputs.claimed(), outputs.commit({}) as staged:
            staged.path("c.txt")
    assert list(tmp_path.iterdir()) == []


def test_undeclared_files_written_into_the_staging_folder_are_refused(tmp_path):
    outputs = _outputs(tmp_path / "out")
    with pytest.raises(SirenError, match=r"wrote stray\.txt, which it does not declare"):
        with outputs.claimed(), outputs.commit({}) as staged:
            staged.path("a.txt").write_text("a")
            staged.path("b").mkdir()
            (staged.dir / "stray.txt").write_text("x")
    assert not (tmp_path / "out").exists()


def test_a_whole_folder_output_is_replaced_whole(tmp_path):
    model = tmp_path / "ckpt" / "GRPO_x_step2"
    outputs = StageOutputs(model, None, script="grpo_trl.py", also_written_by=["main_grpo_amazon.sh"]).check()
    with outputs.claimed(), outputs.commit({}) as staged:
        (staged.dir / "config.json").write_text("{}")
        (staged.dir / "old.safetensors").write_text("w")
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "manifest.json", "old.safetensors"]
    with pytest.raises(SirenError, match=r"output already exists: .*GRPO_x_step2 \(pass --overwrite"):
        StageOutputs(model, None, script="grpo_trl.py").check()
    # The verl backend's folder of that name is this stage's too; --overwrite replaces it whole.
    write_manifest(model, script="main_grpo_amazon.sh", args={})
    again = StageOutputs(model, None, script="grpo_trl.py", also_written_by=["main_grpo_amazon.sh"],
                         overwrite=True).check()
    with again.claimed(), again.commit({}) as staged:
        (staged.dir / "config.json").write_text("{}")
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "manifest.json"]
    assert sorted(p.name for p in model.parent.iterdir()) == ["GRPO_x_step2"]


# ---- only its own files, never where its inputs are ---------------------------------------------


def test_overwrite_never_replaces_another_stages_files(tmp_path):
    out = tmp_path / "out"
    _commit(_outputs(out))
    _commit(_outputs(out, overwrite=True).check(), "again")  # its own: replaced with --overwrite
    assert (out / "a.txt").read_text() == "again"
    write_manifest(out, script="scripts/other_stage.py", args={})
    for overwrite in (False, True):
        with pytest.raises(SirenError, match=r"holds the outputs of other_stage\.py \(its manifest\.json\); stage\.py "
                                             r"never replaces another stage's files, with or without --overwrite"):
            _outputs(out, overwrite=overwrite).check()
    assert json.loads((out / "manifest.json").read_text())["script"] == "scripts/other_stage.py"


def test_an_output_folder_among_the_inputs_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_text("x")
    for out, where in ((data, "is"), (tmp_path, "holds"), (tmp_path.parent, "lies above"), (data / "x", "lies inside")):
        with pytest.raises(SirenError, match=rf"\(--data_root\) {where} this stage's input"):
            _outputs(out, inputs=[data], flag="--data_root").check()
    assert sorted(p.name for p in data.iterdir()) == ["train.parquet"]


# ---- one run per folder ---------------------------------------------------------------------


def test_a_second_run_is_refused_at_once_naming_the_first(tmp_path):
    out = tmp_path / "out"
    with run_holding(out) as pid:
        with pytest.raises(SirenError) as refused:
            with _outputs(out).check().claimed():
                raise AssertionError("the second run must not start")
        message = str(refused.value)
        assert "\n" not in message and f"in use by another run (process {pid}" in message
        assert "one run per folder" in message and "choose another --output_dir" in message
    _commit(_outputs(out))  # once the first has ended, the folder is free


def test_the_lock_of_a_killed_run_is_taken_over_and_its_staging_folder_removed(tmp_path, capsys):
    out = tmp_path / "out"
    pid = run_killed_while_writing(out, "a.txt")
    left = leftover_scratch(out)
    assert [p.name for p in left] and all(p.name.startswith(".out.staging-") for p in left)
    assert lock_path(out).is_file()  # kill -9 released the flock, not the file
    _commit(_outputs(out))
    err = capsys.readouterr().err
    assert f"took over the lock of {out} from process {pid}" in err
    assert re.search(rf"removed 1 staging folder\(s\) a killed run of {re.escape(str(out))} left: \.out\.staging-", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "a.txt").read_text() == "new"


def test_staging_folders_of_a_live_run_are_left_alone(tmp_path):
    out = tmp_path / "out"
    staging = tmp_path / ".out.staging-0123abcd"
    staging.mkdir()
    with run_holding(out):
        with pytest.raises(SirenError, match="in use by another run"):
            with _outputs(out).claimed():
                pass
    assert staging.is_dir()


def test_leftover_scratch_names_only_this_outputs_hidden_entries(tmp_path):
    for name in (".out.staging-0123abcd", ".out.replaced-ab_9cdef", ".out.k2j4_x9a.tmp", "out",
                 ".out.x.staging-0123abcd", ".outer.staging-0123abcd", ".out.staging-short"):
        (tmp_path / name).mkdir()
    assert [p.name for p in leftover_scratch(tmp_path / "out")] == [
        ".out.k2j4_x9a.tmp", ".out.replaced-ab_9cdef", ".out.staging-0123abcd"]


class _Processes:
    """accelerate's PartialState as claimed_folder sees it: rank `index` of `count` processes."""

    def __init__(self, index: int, count: int) -> None:
        self.process_index, self.num_processes, self.is_main_process = index, count, index == 0


def test_several_processes_take_the_lock_once_in_the_main_process(tmp_path, monkeypatch):
    import siren.distributed

    told = []
    # The broadcast of the main process's answer, as rank 1 receives it.
    monkeypatch.setattr(siren.distributed, "from_main", lambda state, value: told.append(value) or "refused on rank 0")
    with pytest.raises(SirenError, match="refused on rank 0"):
        with claimed_folder(tmp_path / "out", _Processes(1, 2)):
            pass
    assert told == [None]  # rank 1 did not try the lock itself
    assert not lock_path(tmp_path / "out").exists()
    monkeypatch.setattr(siren.distributed, "from_main", lambda state, value: value)
    with claimed_folder(tmp_path / "out", _Processes(0, 2)):
        assert lock_path(tmp_path / "out").is_file()
        with claimed_folder(tmp_path / "out", _Processes(1, 2)):  # another rank of the same run: no lock
            pass
    assert not lock_path(tmp_path / "out").exists()


def test_the_lock_file_is_not_a_lock_once_released(tmp_path):
    first = FolderLock(tmp_path / "out")
    assert first.acquire() is None
    first.release()
    second = FolderLock(tmp_path / "out")
    assert second.acquire() is None  # a clean release leaves no record to take over
    second.release()


# ---- the manifest beside an input ---------------------------------------------------------------


def test_an_inputs_manifest_must_fit_the_stage(tmp_path):
    parquet = tmp_path / "max@10-long@True"
    parquet.mkdir()
    (parquet / "train.parquet").write_text("x")
    assert check_input_manifest(parquet, made_by="preprocess_grpo.py", flag="--data_path") is None  # none: passes
    write_manifest(parquet, script="preprocess_grpo.py",
                   args={"max_history": 10, "use_long_history": True, "split": "val", "limit": None})
    check_input_manifest(parquet / "train.parquet", made_by="preprocess_grpo.py", flag="--data_path",
                         expect={"max_history": (10, "--max_history"), "use_long_history": (True, "--x"),
                                 "split": ("valid", "--split"), "limit": (5, "--limit"), "other": (1, "--o")})
    with pytest.raises(SirenError, match=r"^--data_path .*max@10-long@True was made with max_history 10 \(.*manifest"
                                         r"\.json\), but this run asks for 5 \(--max_history\)$"):
        check_input_manifest(parquet, made_by="preprocess_grpo.py", flag="--data_path",
                             expect={"max_history": (5, "--max_history")})
    with pytest.raises(SirenError, match=r"made with use_long_history True .* asks for False"):
        check_input_manifest(parquet, made_by="preprocess_grpo.py", flag="--data_path",
                             expect={"use_long_history": (False, "--use_long_history")})
    with pytest.raises(SirenError, match=r"made with split 'val' .* asks for 'test'"):
        check_input_manifest(parquet, made_by="preprocess_grpo.py", flag="--data_path", expect={"split": ("test", "x")})
    with pytest.raises(SirenError, match=r"was written by preprocess_grpo\.py, not preprocess_hidden\.py .*not this "
                                         r"stage's input"):
        check_input_manifest(parquet, made_by="preprocess_hidden.py", flag="--data_path")
    (parquet / "manifest.json").write_text("[1, 2]")
    with pytest.raises(SirenError, match="expected a JSON object"):
        check_input_manifest(parquet, made_by="preprocess_grpo.py", flag="--data_path")


# ---- a failed launched run ends with its line -------------------------------------------------


def test_the_launchers_last_line():
    from siren.launch import exit_status, failure_line

    assert failure_line(1, "error: no thinking file at x", 2) == "error: no thinking file at x"
    assert failure_line(0, {"message": "error: x", "extraInfo": {}}, 2) == "error: x"
    assert failure_line(1, "To enable traceback see: ...", 1) == (
        "error: process 1 of the launched run failed (exit status 1); its output above says why")
    assert "signal 9" in failure_line(0, "Signal 9 (SIGKILL) received by PID 5", -9)
    assert (exit_status(2), exit_status(-9), exit_status(0)) == (2, 137, 1)


def test_run_main_tells_the_launcher_its_line(tmp_path, monkeypatch, capsys):
    from siren.cli import LAUNCHER_ERROR_FILE_ENV, run_main

    error_file = tmp_path / "error.json"
    monkeypatch.setenv(LAUNCHER_ERROR_FILE_ENV, str(error_file))

    def refuse():
        raise SirenError("no thinking file at x")

    assert run_main(refuse) == 2
    assert capsys.readouterr().err == "error: no thinking file at x\n"
    record = json.loads(error_file.read_text())
    assert record["message"] == "error: no thinking file at x" and isinstance(record["timestamp"], int)
