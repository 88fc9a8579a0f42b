"""main_grpo_amazon.sh: the verl 0.9.1 config it composes and checks (DRY_RUN=1, `siren.grpo_verl plan`),
the merge after training, and the settings it hands to grpo_trl.py with BACKEND=trl."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, model_of_the_4b_shape

from siren import SirenError

LAUNCHER = REPO / "main_grpo_amazon.sh"


def run_launcher(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(LAUNCHER), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=600)


def _fake_python(tmp_path: Path) -> tuple[str, Path]:
    """A PYTHON that only records that it was started (appending its arguments, one a line, to the marker)."""
    marker = tmp_path / "python_was_started"
    script = tmp_path / "fake_python"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >> {marker}\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), marker


def plan_args(env: dict, tmp_path: Path, *args: str) -> list[str]:
    """The `python -m siren.grpo_verl ...` arguments the launcher's dry run would run (recorded, not run)."""
    fake_python, marker = _fake_python(tmp_path)
    proc = run_launcher({"PYTHON": fake_python, "DRY_RUN": "1", **env}, tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    recorded = marker.read_text().splitlines()
    marker.unlink()
    assert recorded[:2] == ["-m", "siren.grpo_verl"], recorded[:3]
    return recorded[2:]


def run_plan(args: list[str], capsys) -> tuple[str, str]:
    """`python -m siren.grpo_verl ARGS` in this process (Hydra's composition is fast once imported)."""
    from siren.grpo_verl import main

    main(args)
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.fixture
def base_env(tiny_model_dir, verl_dir) -> dict:
    return {"MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2"}


# The dry run of `dry_run` below: 2 nodes of 2 GPUs, a logger, a launcher setting and an extra override.
DRY_RUN_ARGS = ("actor_rollout_ref.rollout.temperature=0.9",)


@pytest.fixture(scope="module")
def dry_run(tiny_model_dir, verl_dir, tmp_path_factory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    """The launcher's dry run (its settings, its working directory, the run), once for the module: from
    a directory other than the repo (paths must not depend on cwd)."""
    cwd = tmp_path_factory.mktemp("elsewhere")
    env = {"MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2", "NNODES": "2",
           "TRAINER_DIR": str(cwd / "trainer"), "LOGGER": "console,wandb", "VAL_BEFORE_TRAIN": "False"}
    proc = run_launcher({**env, "DRY_RUN": "1"}, cwd, *DRY_RUN_ARGS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[validate_config] All configuration checks passed" in proc.stderr and "memory estimate" in proc.stderr
    return env, cwd, proc


@pytest.fixture(scope="module")
def composed(dry_run) -> dict:
    """verl's composed config, as the dry run prints it."""
    import yaml

    return yaml.safe_load(dry_run[2].stdout)


@pytest.mark.slow
def test_dry_run_sets_the_keys_verl_reads(composed, tiny_model_dir, verl_dir):
    """The keys whose name or meaning changed in verl 0.9.1, and what the launcher derives (not its defaults)."""
    actor_rollout_ref = composed["actor_rollout_ref"]
    actor, rollout, ref = actor_rollout_ref["actor"], actor_rollout_ref["rollout"], actor_rollout_ref["ref"]
    reward_fn = composed["reward"]["custom_reward_function"]
    assert reward_fn["name"] == "compute_score"
    reward_path = Path(reward_fn["path"])
    assert reward_path.is_absolute() and reward_path.resolve() == (REPO / "siren" / "reward.py").resolve()
    assert re.search(r"^def compute_score\(", reward_path.read_text(), flags=re.M)
    # the pre-0.9 top-level key is left alone: verl 0.9.1 reads reward.custom_reward_function
    assert composed["custom_reward_function"] == {"path": None, "name": None}
    assert rollout["name"] == "vllm" and rollout["tensor_model_parallel_size"] == 1  # no default / default 2
    # only the *_per_gpu micro-batch keys are set (verl refuses both), all three from MICRO_BATCH_SIZE
    assert actor["ppo_micro_batch_size"] is None and rollout["log_prob_micro_batch_size"] is None
    assert ref["log_prob_micro_batch_size"] is None
    assert actor["ppo_micro_batch_size_per_gpu"] == rollout["log_prob_micro_batch_size_per_gpu"] \
        == ref["log_prob_micro_batch_size_per_gpu"] == 4
    # BATCH_SIZE counts prompts per GPU: the train batch and the one mini batch per step span the 4 GPUs
    # (2 nodes of 2)
    assert (composed["trainer"]["nnodes"], composed["trainer"]["n_gpus_per_node"]) == (2, 2)
    assert composed["data"]["train_batch_size"] == actor["ppo_mini_batch_size"] == 32 * 4
    assert composed["data"]["train_files"] == str(verl_dir / "train.parquet")  # from another working directory
    assert actor_rollout_ref["model"]["path"] == str(tiny_model_dir)
    # the tiny model fits without offloading (OFFLOAD=auto)
    assert actor["fsdp_config"]["param_offload"] is False and actor["fsdp_config"]["optimizer_offload"] is False
    trainer = composed["trainer"]
    assert trainer["total_training_steps"] is None  # MAX_STEPS=0: the epochs
    assert trainer["logger"] == ["console", "wandb"] and trainer["val_before_train"] is False
    assert trainer["resume_mode"] == "disable"  # stated, not verl's silent "auto"
    # checkpoints: only the latest is kept, with what the merge (model) and a resume (optimizer, extra) read
    assert trainer["max_actor_ckpt_to_keep"] == 1
    assert actor["checkpoint"]["save_contents"] == ["model", "optimizer", "extra"]
    assert rollout["temperature"] == 0.9  # extra Hydra overrides of keys the launcher leaves alone pass through


@pytest.mark.slow
def test_the_dry_run_prints_what_main_ppo_composes(dry_run, tmp_path):
    """The dry run composes in-process; a real run hands the same overrides to main_ppo: `--cfg job` of
    that command prints the same config."""
    env, cwd, dry = dry_run
    stand_in = tmp_path / "python_cfg_job"
    stand_in.write_text(f"""#!/bin/bash
if [[ "$1 $2" == "-m verl.trainer.main_ppo" ]]; then shift 2; exec {sys.executable} -m verl.trainer.main_ppo "$@" --cfg job; fi
exec {sys.executable} "$@"
""")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    real = run_launcher({**env, "PYTHON": str(stand_in)}, cwd, *DRY_RUN_ARGS)
    assert "training wrote no checkpoint" in real.stderr  # --cfg job trains nothing
    assert real.stdout == dry.stdout and "train_batch_size: 128" in dry.stdout


@pytest.mark.parametrize("nnodes, gpus", [(1, 1), (1, 2), (1, 4), (1, 8), (2, 8)])
def test_the_dry_run_passes_verls_validation_for_every_gpu_count(nnodes, gpus, base_env, tmp_path, capsys):
    import yaml

    args = plan_args({**base_env, "NNODES": str(nnodes), "NUM_GPUS": str(gpus)}, tmp_path)
    out, err = run_plan(args, capsys)
    config = yaml.safe_load(out)
    every_gpu = nnodes * gpus
    assert config["data"]["train_batch_size"] == 32 * every_gpu  # BATCH_SIZE prompts per GPU of every node
    assert config["actor_rollout_ref"]["actor"]["ppo_mini_batch_size"] == 32 * every_gpu
    assert (config["trainer"]["nnodes"], config["trainer"]["n_gpus_per_node"]) == (nnodes, gpus)
    assert "[validate_config] All configuration checks passed" in err
    assert f"{every_gpu} GPU(s)" in err and "256 sequences per GPU per step" in err


def test_verls_own_validation_runs_in_the_dry_run(base_env, tmp_path, capsys):
    """verl's validate_config refuses both micro-batch keys set at once; `--cfg job` printed such a config."""
    args = plan_args(base_env, tmp_path, "actor_rollout_ref.actor.ppo_micro_batch_size=8")
    with pytest.raises(SirenError, match=r"^verl's validate_config rejects the config: .*\[actor\] You have set both"):
        run_plan(args, capsys)


# The launcher's numbers are checked by Hydra, verl and `siren.grpo_verl plan`: one line naming the setting.
BAD_PLAN_SETTINGS = {
    "val_before_train": ({"VAL_BEFORE_TRAIN": "maybe"}, "VAL_BEFORE_TRAIN (trainer.val_before_train) must be True or False, got 'maybe'"),
    "logger": ({"LOGGER": "bogus"}, "LOGGER (trainer.logger): unknown logger 'bogus'"),
    "logger_one_of_two": ({"LOGGER": "console,wandbb"}, "unknown logger 'wandbb'"),
    "batch_zero": ({"BATCH_SIZE": "0"}, "BATCH_SIZE must be a whole number >= 1, got '0'"),
    "batch_word": ({"BATCH_SIZE": "abc"}, "BATCH_SIZE must be a whole number >= 1, got 'abc'"),
    "batch_huge": ({"BATCH_SIZE": "99999999999"}, "BATCH_SIZE must be a whole number >= 1"),
    "micro_zero": ({"MICRO_BATCH_SIZE": "0"}, "MICRO_BATCH_SIZE (actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu) must be a whole number >= 1"),
    "micro_word": ({"MICRO_BATCH_SIZE": "four"}, "MICRO_BATCH_SIZE (actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu) must be a whole number >= 1, got 'four'"),
    "micro_not_dividing": ({"BATCH_SIZE": "3", "MICRO_BATCH_SIZE": "5"}, "BATCH_SIZE x ROLLOUT_N = 3 x 8 = 24 sequences per GPU must be a multiple of MICRO_BATCH_SIZE"),
    "rollout_one": ({"ROLLOUT_N": "1"}, "ROLLOUT_N (actor_rollout_ref.rollout.n) must be a whole number >= 2, got 1"),
    "prompt_length": ({"MAX_PROMPT_LENGTH": "2k"}, "MAX_PROMPT_LENGTH (data.max_prompt_length) must be a whole number >= 1, got '2k'"),
    "response_length": ({"MAX_RESPONSE_LENGTH": "0"}, "MAX_RESPONSE_LENGTH (data.max_response_length) must be a whole number >= 1"),
    "epochs_fraction": ({"EPOCHS": "1.5"}, "EPOCHS (trainer.total_epochs) must be a whole number >= 1, got 1.5"),
    "max_steps_negative": ({"MAX_STEPS": "-1"}, "MAX_STEPS (trainer.total_training_steps) must be a whole number >= 1 (or 0"),
    "save_freq_word": ({"SAVE_FREQ": "x"}, "SAVE_FREQ (trainer.save_freq) must be a whole number >= 1, got 'x'"),
    "save_freq_zero": ({"SAVE_FREQ": "0"}, "SAVE_FREQ (trainer.save_freq) must be a whole number >= 1, got 0"),
    "test_freq": ({"TEST_FREQ": "-5"}, "TEST_FREQ (trainer.test_freq) must be a whole number >= 0, got -5"),
    "lora_rank": ({"LORA_RANK": "eight"}, "LORA_RANK (actor_rollout_ref.model.lora_rank) must be a whole number >= 0"),
    "keep": ({"KEEP_CHECKPOINTS": "0"}, "KEEP_CHECKPOINTS (trainer.max_actor_ckpt_to_keep) must be a whole number >= 1"),
    "nnodes": ({"NNODES": "0"}, "NNODES (trainer.nnodes) must be a whole number >= 1, got 0"),
    "num_gpus_word": ({"NUM_GPUS": "two"}, "NUM_GPUS (trainer.n_gpus_per_node) must be a whole number >= 1, got 'two'"),
    "lr_zero": ({"LR": "0"}, "LR (actor_rollout_ref.actor.optim.lr) must be a finite number > 0, got 0"),
    "lr_negative": ({"LR": "-1e-6"}, "LR (actor_rollout_ref.actor.optim.lr) must be a finite number > 0, got -1e-06"),
    "lr_word": ({"LR": "fast"}, "LR (actor_rollout_ref.actor.optim.lr) must be a finite number > 0, got 'fast'"),
    "lr_nan": ({"LR": "nan"}, "must be a finite number > 0, got nan"),
    "kl_negative": ({"KL_COEF": "-0.1"}, "KL_COEF (actor_rollout_ref.actor.kl_loss_coef) must be a finite number >= 0, got -0.1"),
    "gpu_memory_zero": ({"GPU_MEMORY_UTILIZATION": "0"}, "GPU_MEMORY_UTILIZATION (actor_rollout_ref.rollout.gpu_memory_utilization) must be a finite number in (0, 1], got 0"),
    "gpu_memory_over_one": ({"GPU_MEMORY_UTILIZATION": "1.2"}, "must be a finite number in (0, 1], got 1.2"),
    "offload": ({"OFFLOAD": "yes"}, "OFFLOAD must be auto, none, optimizer or all, got 'yes'"),
    "card": ({"GPU_MEMORY_GIB": "lots"}, "GPU_MEMORY_GIB must be a positive number, got 'lots'"),
    "resume_mode": ({"RESUME_MODE": "yes"}, "RESUME_MODE (trainer.resume_mode) must be disable, auto or resume_path, got 'yes'"),
    "resume_path_unset": ({"RESUME_MODE": "resume_path"}, "RESUME_MODE=resume_path needs RESUME_FROM_PATH"),
    "model_missing": ({"MODEL_PATH": "no_such_model"}, "MODEL_PATH=no_such_model is not a model folder (no config.json)"),
    "missing_val": ({"DATA_DIR": "data"}, "missing parquet split: data/val.parquet"),
    # issue 20 group 9: DATA_NAME names $CKPT_DIR/GRPO_{DATA_NAME}_step{S}; "../../x" put it outside CKPT_DIR
    "data_name_path": ({"DATA_NAME": "../../x"}, "DATA_NAME '../../x' is not a name: a DATA_NAME is one folder name"),
    "category_path": ({"CATEGORY": "../slice/Movies"}, "DATA_NAME '../slice/Movies' is not a name"),
}


def test_settings_that_contradict_the_data_dirs_manifest_are_refused(base_env, verl_dir, tmp_path, capsys):
    """Issue 20 group 3, as grpo_trl.py does it: CATEGORY, MAX_HISTORY or USE_LONG_HISTORY name the default
    DATA_DIR; given with a DATA_DIR built otherwise, they contradict its manifest (the run would train on
    max@10 data and name it for 30, or on Movies and call it Books). Not given: nothing to contradict."""
    data = shutil.copytree(verl_dir, tmp_path / "parquet")
    manifest = {"script": "preprocess_grpo.py", "args": {"category": "Movies", "max_history": 10,
                                                         "use_long_history": False}}
    (data / "manifest.json").write_text(json.dumps(manifest))
    env = {**base_env, "DATA_DIR": str(data)}
    run_plan(plan_args(env, tmp_path), capsys)
    run_plan(plan_args({**env, "MAX_HISTORY": "10", "USE_LONG_HISTORY": "false", "CATEGORY": "Movies"}, tmp_path), capsys)
    for settings, message in (({"MAX_HISTORY": "30"}, "max_history 10 .*asks for 30 \\(MAX_HISTORY\\)"),
                              ({"USE_LONG_HISTORY": "True"}, "use_long_history False .*asks for True \\(USE_LONG_HISTORY\\)"),
                              ({"CATEGORY": "Books"}, "category 'Movies' .*asks for 'Books' \\(CATEGORY\\)")):
        with pytest.raises(SirenError, match=f"^DATA_DIR {re.escape(str(data))} was made with {message}"):
            run_plan(plan_args({**env, **settings}, tmp_path), capsys)
    (data / "manifest.json").write_text(json.dumps({**manifest, "script": "preprocess_hidden.py"}))
    with pytest.raises(SirenError, match=r"was written by preprocess_hidden\.py, not preprocess_grpo\.py"):
        run_plan(plan_args(env, tmp_path), capsys)


@pytest.mark.parametrize("case", list(BAD_PLAN_SETTINGS))
def test_bad_settings_are_one_line_before_ray_starts(case, base_env, verl_dir, tmp_path, capsys, monkeypatch):
    (tmp_path / "data").mkdir()
    shutil.copy(verl_dir / "train.parquet", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    settings, expected = BAD_PLAN_SETTINGS[case]
    args = plan_args({**base_env, **settings}, tmp_path)
    with pytest.raises(SirenError) as refused:
        run_plan(args, capsys)
    assert str(refused.value).startswith(expected) or expected in str(refused.value), str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.slow
def test_the_dry_run_and_the_run_refuse_what_verl_would_accept(base_env, tmp_path):
    """Issue 20: VAL_BEFORE_TRAIN=maybe and LOGGER=bogus passed the dry run (and a real run found out after Ray
    had started and the model had loaded). Both modes refuse through the one plan step whose every
    message test_bad_settings_are_one_line_before_ray_starts checks in-process; one setting shows
    the launcher stops there, before main_ppo, in both modes."""
    settings, expected = {"VAL_BEFORE_TRAIN": "maybe"}, "VAL_BEFORE_TRAIN"
    stand_in = tmp_path / "python"
    calls = tmp_path / "calls"
    stand_in.write_text(f"""#!/bin/bash
[[ "$1 $2" == "-m verl.trainer.main_ppo" ]] && {{ echo main_ppo >> {calls}; exit 0; }}
exec {sys.executable} "$@"
""")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    for dry_run in ("1", "0"):
        proc = run_launcher({**base_env, **settings, "DRY_RUN": dry_run, "PYTHON": str(stand_in)}, tmp_path)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.startswith(f"error: {expected}") and proc.stderr.count("\n") == 1, proc.stderr
    assert not calls.exists()


def test_a_hydra_override_of_a_launcher_setting_is_refused(base_env, tmp_path, capsys):
    """One setting, one value: LR and actor_rollout_ref.actor.optim.lr=... would have been two."""
    for override, setting in (("actor_rollout_ref.actor.optim.lr=2e-6", "LR"),
                              ("trainer.val_before_train=False", "VAL_BEFORE_TRAIN"),
                              ("actor_rollout_ref.actor.fsdp_config.param_offload=True", "OFFLOAD"),
                              ("data.train_batch_size=64", "BATCH_SIZE")):
        args = plan_args(base_env, tmp_path, override)
        with pytest.raises(SirenError, match=rf"sets .*which the launcher sets from {setting}: set {setting} instead"):
            run_plan(args, capsys)


@pytest.mark.parametrize("gpus, card, expected", [("1", "80", "optimizer"), ("2", "80", "none"), ("1", "40", None)])
def test_offloading_is_chosen_from_the_gpus_and_the_model(gpus, card, expected, tiny_model_dir, verl_dir, tmp_path,
                                                          capsys):
    import yaml

    from siren.grpo_memory import OFFLOAD_LEVELS

    model = model_of_the_4b_shape(tiny_model_dir, tmp_path / "qwen3-4b-shape")
    env = {"MODEL_PATH": str(model), "DATA_DIR": str(verl_dir), "NUM_GPUS": gpus, "GPU_MEMORY_GIB": card}
    args = plan_args(env, tmp_path)
    if expected is None:
        with pytest.raises(SirenError, match=r"does not fit even with all offloading: offload=all: update 72\.\d GiB"):
            run_plan(args, capsys)
        return
    out, err = run_plan(args, capsys)
    fsdp = yaml.safe_load(out)["actor_rollout_ref"]["actor"]["fsdp_config"]
    assert {key: fsdp[key] for key in OFFLOAD_LEVELS[expected]} == OFFLOAD_LEVELS[expected]
    assert f"offload={expected}: update" in err and "4.02B parameters" in err and "OFFLOAD=auto" in err
    # what a real run adds to main_ppo's command line
    out, _ = run_plan([arg for arg in args if arg != "--dry_run"], capsys)
    assert out.split() == ["data.train_batch_size=" + str(32 * int(gpus)),
                           "actor_rollout_ref.actor.ppo_mini_batch_size=" + str(32 * int(gpus)),
                           f"actor_rollout_ref.actor.fsdp_config.param_offload={OFFLOAD_LEVELS[expected]['param_offload']}",
                           f"actor_rollout_ref.actor.fsdp_config.optimizer_offload="
                           f"{OFFLOAD_LEVELS[expected]['optimizer_offload']}"]
    # OFFLOAD=none is taken as given, and refused where it cannot fit
    if expected != "none":
        with pytest.raises(SirenError, match="the run does not fit: offload=none"):
            run_plan(plan_args({**env, "OFFLOAD": "none"}, tmp_path), capsys)


def test_an_old_checkpoint_is_refused_unless_resumed(base_env, tmp_path, capsys):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "latest_checkpointed_iteration.txt").write_text("7\n")
    env = {**base_env, "TRAINER_DIR": str(tmp_path / "trainer")}
    args = plan_args(env, tmp_path)
    run_plan(args, capsys)  # a dry run starts nothing, so it is not refused
    real_run = [arg for arg in args if arg != "--dry_run"]
    with pytest.raises(SirenError, match=r"already holds a verl checkpoint \(step 7\): set RESUME_MODE=auto"):
        run_plan(real_run, capsys)
    resumed = plan_args({**env, "RESUME_MODE": "auto"}, tmp_path)
    run_plan([arg for arg in resumed if arg != "--dry_run"], capsys)
    assert "trainer.resume_mode=auto" in resumed
    resume_path = plan_args({**env, "RESUME_MODE": "resume_path", "RESUME_FROM_PATH": "trainer/global_step_7"}, tmp_path)
    assert "trainer.resume_mode=resume_path" in resume_path
    assert "trainer.resume_from_path='trainer/global_step_7'" in resume_path


BAD_SHELL_SETTINGS = {
    "model_unset": ({"MODEL_PATH": ""}, "set MODEL_PATH"),
    "no_gpus": ({"NUM_GPUS": "0"}, "NUM_GPUS=0"),
    "bad_backend": ({"BACKEND": "deepspeed"}, "BACKEND must be verl or trl"),
    "bad_attention": ({"ATTN_IMPLEMENTATION": "flash_attention_3"}, "ATTN_IMPLEMENTATION must be"),
    "overwrite_word": ({"OVERWRITE": "yes"}, "OVERWRITE must be 0 or 1, got 'yes'"),
    "dry_run_word": ({"DRY_RUN": "2"}, "DRY_RUN must be 0 or 1, got '2'"),
    "trl_resume": ({"BACKEND": "trl", "RESUME_MODE": "auto"}, "RESUME_MODE is read by BACKEND=verl only"),
    "trl_offload": ({"BACKEND": "trl", "OFFLOAD": "all"}, "OFFLOAD is read by BACKEND=verl only"),
    "trl_val": ({"BACKEND": "trl", "VAL_BEFORE_TRAIN": "False"}, "VAL_BEFORE_TRAIN is read by BACKEND=verl only"),
    "trl_gpus": ({"BACKEND": "trl", "NUM_GPUS": "2"}, "NUM_GPUS=2: BACKEND=trl runs one process on one device"),
}


@pytest.mark.parametrize("case", list(BAD_SHELL_SETTINGS))
def test_what_only_the_shell_reads_is_checked_there(case, base_env, tmp_path):
    fake_python, marker = _fake_python(tmp_path)
    settings, expected = BAD_SHELL_SETTINGS[case]
    proc = run_launcher({**base_env, "PYTHON": fake_python, **settings}, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and expected in proc.stderr and proc.stderr.count("\n") == 1
    assert not marker.exists()


def test_launcher_uses_no_plus_prefixed_overrides():
    """`+key=value` would add a key verl never reads instead of failing on a wrong name. The one
    exception adds to model.override_config, an empty open dict in verl's schema whose
    attn_implementation verl reads (checked through verl in the test below)."""
    overrides = re.findall(r"^\s+(\+?[a-z_]+\.[a-z_.]+)=", LAUNCHER.read_text(), flags=re.M)
    assert len(overrides) > 20
    plus = [key for key in overrides if key.startswith("+")]
    assert plus == ["+actor_rollout_ref.model.override_config.attn_implementation"]


def test_the_settings_named_in_messages_are_the_ones_the_launcher_sets():
    """siren.grpo_verl names the launcher's setting behind a key: each pair is in the launcher."""
    from siren.grpo_verl import SETTING_OF_KEY

    text = LAUNCHER.read_text()
    for key, setting in SETTING_OF_KEY.items():
        line = re.search(rf"^\s+{re.escape(key)}=(.*)$", text, flags=re.M)
        assert line, key
        names = re.findall(r"\$\{?([A-Z_]+)", line.group(1))
        # the setting itself, or a variable the launcher derives from it (TOTAL_STEPS=$MAX_STEPS)
        assert setting in names or any(re.search(rf"^{name}=\${setting}$", text, flags=re.M) for name in names), \
            (key, setting, names)


@pytest.mark.slow
def test_actor_and_ref_load_with_what_requirements_installs(composed):
    """verl builds the actor and the ref model from actor_rollout_ref.model (the ref deep-copies it):
    its attention must be one requirements.txt installs, loaded here the way verl's FSDP engine loads it."""
    import torch
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.model import get_hf_auto_model_class

    model = composed["actor_rollout_ref"]["model"]
    attention = model["override_config"].get("attn_implementation", "flash_attention_2")  # verl's default
    requirements = (REPO / "requirements.txt").read_text()
    if attention == "flash_attention_2":
        assert re.search(r"^flash[-_]attn\b", requirements, flags=re.M), "flash_attention_2 without flash-attn"
    else:
        assert attention == "sdpa" and model["use_remove_padding"] is False
    config = OmegaConf.create(composed)
    model_config = omega_conf_to_dataclass(config.actor_rollout_ref.model)  # verl's HFModelConfig
    assert model_config.hf_config._attn_implementation == attention
    if attention != "flash_attention_2" or importlib.util.find_spec("flash_attn"):
        auto_class = get_hf_auto_model_class(hf_config=model_config.hf_config)
        loaded = auto_class.from_pretrained(pretrained_model_name_or_path=model_config.local_path,
                                            dtype=torch.float32, config=model_config.hf_config)
        assert loaded.config._attn_implementation == attention
    # verl's value-head loader (critic, reward model) hard-codes flash_attention_2: GRPO uses neither.
    assert not need_critic(config) and not composed["reward_model"]["enable"]


# The reward cases of the foundation issue, called the way verl 0.9.1 calls the custom reward.
REWARD_CASES = [
    ("<think>likes dramas</think><answer>4.0</answer>", "4.0", 3.0),
    ("<think>x</think>\n<answer> 4 </answer>", "4.0", 3.0),
    ("<think>x</think><answer>5</answer>", "1.0", -1.0),          # format +1, content 2 - 4*4/4 = -2
    ("<think>x</think><answer>3.5</answer>", "4.0", 2.5),         # content 2 - 4*0.5/4 = 1.5
    ("<think>x</think><answer>9</answer>", "5.0", 3.0),           # clipped to 5
    ("<think>x</think><answer>0</answer>", "1.0", 3.0),           # clipped to 1
    ("<answer>4</answer>", "4.0", 1.0),                           # format -1, content +2
    ("<think>x</think><answer>four</answer>", "4.0", -1.0),      # not a number: content -2
    ("<think>x</think>", "4.0", -3.0),                            # no answer: -1 - 2
    ("<think>a</think><answer>4</answer><answer>4</answer>", "4.0", 1.0),  # two answers: format -1
    ("<answer>4</answer><think>x</think>", "4.0", 1.0),           # wrong order
]


@pytest.mark.slow
@pytest.mark.parametrize("response,label,expected", REWARD_CASES)
def test_reward_cases_through_verl_entry_point(composed, response, label, expected):
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    reward_fn = get_custom_reward_fn(OmegaConf.create(composed))
    result = reward_fn(data_source="AmazonReviews/Movies", solution_str=response, ground_truth=label,
                       extra_info={"split": "train", "index": 0})
    assert result["score"] == pytest.approx(expected)
    assert result["format_score"] + result["content_score"] == pytest.approx(result["score"])


@pytest.mark.parametrize("has_venv", [True, False])
def test_python_defaults_to_the_repo_venv(has_venv, tiny_model_dir, verl_dir, tmp_path):
    """With PYTHON unset, the launcher runs <repo>/.venv/bin/python (make install's venv) when it exists."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / LAUNCHER.name).write_text(LAUNCHER.read_text())
    if has_venv:
        (repo / ".venv" / "bin").mkdir(parents=True)
        fake_python, _ = _fake_python(repo / ".venv" / "bin")
        Path(fake_python).rename(repo / ".venv" / "bin" / "python")
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    env.update({"BACKEND": "trl", "DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir)})
    proc = subprocess.run(["bash", str(repo / LAUNCHER.name)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[:2] == [str(repo / ".venv" / "bin" / "python") if has_venv else "python3",
                                       str(repo / "grpo_trl.py")]


def _verl_stand_in(tmp_path: Path, merger_output: Path | None = None, ranks: tuple = (0, 1)) -> tuple[Path, Path]:
    """A PYTHON that plays verl's trainer (writes global_step_7 with the model shards of `ranks` of 2) and
    merger (copies `merger_output`); the plan answers with fixed overrides (it is tested above)."""
    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python_stand_in"
    merge = f'cp -r {merger_output}/. "$target"' if merger_output else "echo '{}' > \"$target/config.json\""
    shards = " ".join(f'"$dir/global_step_7/actor/model_world_size_2_rank_{rank}.pt"' for rank in ranks)
    stand_in.write_text(f"""#!/bin/bash
if [[ "$1 $2 $3" == "-m siren.grpo_verl plan" ]]; then
    echo "data.train_batch_size=64 actor_rollout_ref.actor.ppo_mini_batch_size=64"
elif [[ "$1 $2" == "-m verl.trainer.main_ppo" ]]; then
    for arg in "$@"; do [[ "$arg" == trainer.default_local_dir=* ]] && dir="${{arg#*=}}" && dir="${{dir//\\'/}}"; done
    mkdir -p "$dir/global_step_7/actor" && touch {shards} && echo 7 > "$dir/latest_checkpointed_iteration.txt"
    echo "main_ppo $*" >> {calls}
elif [[ "$1 $2" == "-m verl.model_merger" ]]; then
    while [[ $# -gt 0 ]]; do case "$1" in --local_dir) local_dir=$2;; --target_dir) target=$2;; esac; shift; done
    mkdir -p "$target" && {merge}
    echo "merge $local_dir" >> {calls}
else
    exec {sys.executable} "$@"
fi
""")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    return stand_in, calls


def test_after_training_the_latest_checkpoint_is_merged(tiny_model_dir, verl_dir, tmp_path):
    """The post-training steps, with verl's trainer and merger replaced by stand-ins (no GPU here)."""
    stand_in, calls = _verl_stand_in(tmp_path)
    env = {"PYTHON": str(stand_in), "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2",
           "TRAINER_DIR": str(tmp_path / "trainer"), "CKPT_DIR": str(tmp_path / "ckpt")}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = tmp_path / "ckpt" / "GRPO_Movies_step7"
    assert (merged / "config.json").exists()
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["args"]["step"] == "7" and manifest["args"]["backend"] == "verl"
    assert manifest["args"]["planned"] == "data.train_batch_size=64 actor_rollout_ref.actor.ppo_mini_batch_size=64"
    assert "data.train_batch_size=64" in calls.read_text().splitlines()[0].split()  # the plan reached main_ppo
    assert f"merge {tmp_path / 'trainer'}/global_step_7/actor" in calls.read_text()
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["GRPO_Movies_step7"]  # no partial left
    env["RESUME_MODE"] = "auto"  # the trainer folder now holds step 7
    again = run_launcher(env, tmp_path)
    assert again.returncode == 2 and "output already exists" in again.stderr
    assert run_launcher({**env, "OVERWRITE": "1"}, tmp_path).returncode == 0


def test_the_merge_never_replaces_the_base_model_or_another_stages_folder(tiny_model_dir, verl_dir, tmp_path):
    """Issue 20 group 8: with OVERWRITE=1 the merge removed whatever ckpt/GRPO_{data}_step{S} was, even
    the MODEL_PATH it trained from (`MODEL_PATH=ckpt/GRPO_Movies_step7 CKPT_DIR=ckpt`). Refused in one
    line; the base model and the trained checkpoint stay."""
    stand_in, calls = _verl_stand_in(tmp_path)
    model = shutil.copytree(tiny_model_dir, tmp_path / "ckpt" / "GRPO_Movies_step7")
    before = sorted((p.name, p.stat().st_size) for p in model.iterdir())
    env = {"PYTHON": str(stand_in), "MODEL_PATH": str(model), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2",
           "TRAINER_DIR": str(tmp_path / "trainer"), "CKPT_DIR": str(tmp_path / "ckpt"), "OVERWRITE": "1"}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"(CKPT_DIR) is this stage's input {model}" in proc.stderr
    assert proc.stderr.rstrip().endswith(f"the verl checkpoint is in {tmp_path / 'trainer'}/global_step_7")
    assert sorted((p.name, p.stat().st_size) for p in model.iterdir()) == before
    assert f"merge {tmp_path / 'trainer'}" not in calls.read_text()

    other = tmp_path / "other_ckpt" / "GRPO_Movies_step7"  # a folder of that name that stage 4c wrote
    other.mkdir(parents=True)
    (other / "manifest.json").write_text(json.dumps({"script": "preprocess_hidden.py"}))
    proc = run_launcher({**env, "MODEL_PATH": str(tiny_model_dir), "CKPT_DIR": str(other.parent)}, tmp_path)
    assert proc.returncode == 2 and "holds the outputs of preprocess_hidden.py" in proc.stderr, proc.stderr
    assert sorted(p.name for p in other.iterdir()) == ["manifest.json"]


def test_a_checkpoint_missing_a_ranks_shard_is_not_merged(tiny_model_dir, verl_dir, tmp_path):
    """Two nodes without a shared TRAINER_DIR: the head sees only its own ranks' shards."""
    stand_in, calls = _verl_stand_in(tmp_path, ranks=(0,))
    env = {"PYTHON": str(stand_in), "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "1",
           "NNODES": "2", "TRAINER_DIR": str(tmp_path / "trainer"), "CKPT_DIR": str(tmp_path / "ckpt")}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "lacks the model shards of rank(s) 1 of 2" in proc.stderr and "shares; nothing merged" in proc.stderr
    assert "merge" not in calls.read_text() and not (tmp_path / "ckpt").exists()


def _lora_merger_output(tiny_model_dir: Path, out: Path, rank: int, alpha: int) -> None:
    """What verl's merger writes for a LoRA run: the base weights (bf16) + lora_adapter/ beside them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base.to(torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    peft_model = get_peft_model(base.float(), LoraConfig(r=rank, lora_alpha=alpha, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a trained adapter (peft starts B at zero)
    peft_model.save_pretrained(out / "lora_adapter")


@pytest.mark.slow
def test_a_lora_run_is_merged_into_the_saved_weights(tiny_model_dir, verl_dir, tmp_path, one_thread):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merger_output = tmp_path / "merger_output"
    _lora_merger_output(tiny_model_dir, merger_output, rank=4, alpha=8)
    base = AutoModelForCausalLM.from_pretrained(merger_output, dtype=torch.float32)
    expected = PeftModel.from_pretrained(base, str(merger_output / "lora_adapter")).merge_and_unload()
    expected = expected.to(torch.bfloat16).state_dict()
    stand_in, _ = _verl_stand_in(tmp_path, merger_output)
    env = {"PYTHON": str(stand_in), "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2",
           "TRAINER_DIR": str(tmp_path / "trainer"), "CKPT_DIR": str(tmp_path / "ckpt"), "LORA_RANK": "4",
           "LORA_ALPHA": "8"}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ckpt" / "GRPO_Movies_step7"
    assert "merged the LoRA adapter (r=4, alpha=8, q_proj, v_proj)" in proc.stdout
    assert not (out / "lora_adapter").exists()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert merged.dtype == torch.bfloat16 and not any("lora" in name for name, _ in merged.named_parameters())
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).state_dict()
    for name, tensor in merged.state_dict().items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0)
        if "q_proj" in name or "v_proj" in name:
            assert not torch.equal(tensor, original[name]), f"{name} is still the base weight"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["lora_merged"] == {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def test_a_lora_run_without_an_adapter_is_an_error(tiny_model_dir, verl_dir, tmp_path):
    stand_in, _ = _verl_stand_in(tmp_path)
    env = {"PYTHON": str(stand_in), "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2",
           "TRAINER_DIR": str(tmp_path / "trainer"), "CKPT_DIR": str(tmp_path / "ckpt"), "LORA_RANK": "4"}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: LORA_RANK=4 but verl's merger wrote no")
    assert not (tmp_path / "ckpt" / "GRPO_Movies_step7").exists()


def test_an_adapter_that_lost_its_alpha_is_refused(tmp_path):
    from siren.grpo_verl import merge_lora_adapter

    adapter = tmp_path / "lora_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 0, "target_modules": ["q_proj"]}')
    with pytest.raises(SirenError, match="lora_alpha=0"):
        merge_lora_adapter(tmp_path)
    assert merge_lora_adapter(tmp_path / "no_adapter_here") is None


def trl_command(env: dict, tmp_path: Path, *args: str) -> list[str]:
    """The grpo_trl.py arguments main_grpo_amazon.sh runs with BACKEND=trl and these settings (its
    DRY_RUN prints the command; no Python is started)."""
    fake_python, marker = _fake_python(tmp_path)
    proc = run_launcher({"PYTHON": fake_python, "BACKEND": "trl", "DRY_RUN": "1", **env}, tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    command = shlex.split(proc.stdout)
    assert command[:2] == [fake_python, str(REPO / "grpo_trl.py")]
    return command[2:]


def test_max_steps_0_runs_the_epochs_with_trl_too(tiny_model_dir, tmp_path):
    """MAX_STEPS=0 means "run the epochs" (verl: total_training_steps null); TRL's --max_steps 0 would
    make zero steps and is refused (siren.bounds), so the launcher passes no flag."""
    assert trl_command({"MODEL_PATH": str(tiny_model_dir), "MAX_STEPS": "0"}, tmp_path) == [f"--model={tiny_model_dir}"]


def test_trl_gets_only_the_settings_given(tiny_model_dir, verl_dir, tmp_path):
    """Issue 20: the launcher's defaults, passed as flags, beat a --config recipe. Now only a setting given to
    the launcher becomes a flag (grpo_trl.py's defaults are the launcher's)."""
    assert trl_command({"MODEL_PATH": str(tiny_model_dir)}, tmp_path, "--val_limit", "3") == \
        [f"--model={tiny_model_dir}", "--val_limit", "3"]
    env = {"MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "BATCH_SIZE": "4", "MICRO_BATCH_SIZE": "2",
           "ROLLOUT_N": "3", "LR": "2e-6", "KL_COEF": "0", "EPOCHS": "3", "MAX_STEPS": "5", "SAVE_FREQ": "0",
           "TEST_FREQ": "7", "LORA_RANK": "8", "LOGGER": "console,wandb", "CKPT_DIR": "models", "TRAINER_DIR": "raw",
           "OVERWRITE": "1", "NUM_GPUS": "1"}
    command = trl_command(env, tmp_path)
    assert command[-3:] == ["--report_to", "wandb", "--overwrite"]
    flags = dict(flag.split("=", 1) for flag in command[:-3])
    assert flags == {"--model": str(tiny_model_dir), "--data_path": str(verl_dir), "--output_dir": "models",
                     "--checkpoint_dir": "raw", "--prompts_per_step": "4", "--per_device_train_batch_size": "2",
                     "--num_generations": "3", "--learning_rate": "2e-6", "--beta": "0", "--num_train_epochs": "3",
                     "--max_steps": "5", "--save_strategy": "no", "--eval_steps": "7", "--use_peft": "true",
                     "--lora_r": "8"}
    assert run_launcher({"BACKEND": "trl", "DRY_RUN": "1", "LOGGER": "console"}, tmp_path).stdout.split()[-2:] == \
        ["--report_to", "none"]


def test_the_trl_command_parses_into_grpo_config(tiny_model_dir, verl_dir, tmp_path):
    """What the launcher passes is what grpo_trl.py's parser reads; MICRO_BATCH_SIZE means sequences in both
    backends: 4 prompts x 2 responses in micro batches of 2 sequences is 4 accumulation steps."""
    from siren.grpo_trl import parse_args

    env = {"MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "BATCH_SIZE": "4", "MICRO_BATCH_SIZE": "2",
           "ROLLOUT_N": "2", "LR": "2e-6", "KL_COEF": "0", "EPOCHS": "3", "TEST_FREQ": "5", "LORA_RANK": "4",
           "OVERWRITE": "1", "USE_LONG_HISTORY": "false"}
    script, config, model = parse_args(trl_command(env, tmp_path))
    assert (model.model_name_or_path, script.data_path, model.use_peft, model.lora_r, script.overwrite) == \
        (str(tiny_model_dir), str(verl_dir), True, 4, True)
    assert (config.learning_rate, config.beta, config.num_train_epochs, config.eval_steps) == (2e-6, 0.0, 3, 5)
    assert (config.per_device_train_batch_size, config.gradient_accumulation_steps) == (2, 4)
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps // config.num_generations == 4
    # without DATA_DIR the folder follows from CATEGORY, MAX_HISTORY and USE_LONG_HISTORY, as for verl
    from siren.verl_data import default_verl_dir

    env.pop("DATA_DIR")
    script = parse_args(trl_command({**env, "MAX_HISTORY": "5"}, tmp_path))[0]
    assert script.data_path == str(default_verl_dir("Movies", 5, False))


def test_the_trl_defaults_are_the_launchers(tiny_model_dir, tmp_path):
    """grpo_trl.py stands in for the launcher's defaults with BACKEND=trl: they must be the same values."""
    from siren.grpo_trl import DEFAULT_PROMPTS_PER_STEP, parse_args

    defaults = dict(re.findall(r"^([A-Z_]+)=\$\{\1:-([^}$]*)\}$", LAUNCHER.read_text(), flags=re.M))
    script, config, model = parse_args(["--model", str(tiny_model_dir)])
    assert int(defaults["BATCH_SIZE"]) == DEFAULT_PROMPTS_PER_STEP \
        == config.per_device_train_batch_size * config.gradient_accumulation_steps // config.num_generations
    assert int(defaults["MICRO_BATCH_SIZE"]) == config.per_device_train_batch_size
    assert int(defaults["ROLLOUT_N"]) == config.num_generations
    assert float(defaults["LR"]) == config.learning_rate and float(defaults["KL_COEF"]) == config.beta
    assert int(defaults["EPOCHS"]) == config.num_train_epochs
    assert int(defaults["MAX_PROMPT_LENGTH"]) == script.max_prompt_length
    assert int(defaults["MAX_RESPONSE_LENGTH"]) == config.max_completion_length
    assert int(defaults["SAVE_FREQ"]) == config.save_steps and int(defaults["TEST_FREQ"]) == config.eval_steps
    assert int(defaults["LORA_ALPHA"]) == model.lora_alpha and defaults["LORA_RANK"] == "0" and not model.use_peft
    assert defaults["CATEGORY"] == script.category and int(defaults["MAX_HISTORY"]) == script.max_history
    assert defaults["ATTN_IMPLEMENTATION"] == "sdpa" and defaults["CKPT_DIR"] == config.output_dir


def test_a_recipe_beats_the_defaults_and_a_setting_given_twice_is_refused(tiny_model_dir, tmp_path):
    """Issue 20: `BACKEND=trl bash main_grpo_amazon.sh --config r.yaml` trained with the launcher's 1e-6 and 0.001."""
    from siren.grpo_trl import parse_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 5e-3\nbeta: 0.5\n")
    env = {"MODEL_PATH": str(tiny_model_dir)}
    script, config, _ = parse_args(trl_command(env, tmp_path, "--config", str(recipe)))
    assert (config.learning_rate, config.beta) == (5e-3, 0.5)
    assert script.user_given["learning_rate"] == f"--config {recipe}"
    with pytest.raises(SirenError, match=r"^learning_rate is given twice: in .*r\.yaml and as --learning_rate"):
        parse_args(trl_command({**env, "LR": "1e-5"}, tmp_path, "--config", str(recipe)))
    with pytest.raises(SirenError, match=r"^num_generations is given twice on the command line"):
        parse_args(trl_command({**env, "ROLLOUT_N": "4"}, tmp_path, "--num_generations", "2"))


BAD_TRL_SETTINGS = {
    "batch_zero": ({"BATCH_SIZE": "0"}, "--prompts_per_step must be a whole number >= 1, got 0"),
    "batch_word": ({"BATCH_SIZE": "abc"}, "argument --prompts_per_step/--prompts-per-step: invalid int value: 'abc'"),
    "micro_not_dividing": ({"BATCH_SIZE": "3", "ROLLOUT_N": "2", "MICRO_BATCH_SIZE": "4"},
                           "--prompts_per_step 3 x --num_generations 2 = 6 sequences per step must be a multiple of "
                           "--per_device_train_batch_size 4"),
    "rollout_one": ({"ROLLOUT_N": "1"}, "--num_generations must be a whole number >= 2, got 1"),
    "lr_negative": ({"LR": "-1e-6"}, "--learning_rate must be a finite number > 0, got -1e-06"),
    "lr_word": ({"LR": "fast"}, "argument --learning_rate/--learning-rate: invalid float value: 'fast'"),
    "kl_negative": ({"KL_COEF": "-0.1"}, "--beta must be a finite number >= 0, got -0.1"),
    "max_steps": ({"MAX_STEPS": "-5"}, "--max_steps must be a whole number >= 1, or -1 (train for --num_train_epochs), "
                                       "got -5"),
    "epochs_zero": ({"EPOCHS": "0"}, "--num_train_epochs must be a finite number > 0, got 0.0"),
    "response_length": ({"MAX_RESPONSE_LENGTH": "0"}, "--max_completion_length must be a whole number >= 1, got 0"),
    "lora_negative": ({"LORA_RANK": "-3"}, "--lora_r must be a whole number >= 1, got -3"),
    "long_history": ({"USE_LONG_HISTORY": "maybe"}, "argument --use_long_history/--use-long-history: Truthy value expected: got maybe"),
}


@pytest.mark.parametrize("case", list(BAD_TRL_SETTINGS))
def test_bad_trl_settings_are_one_line_before_anything_loads(case, tiny_model_dir, tmp_path):
    from siren.grpo_trl import parse_args

    settings, expected = BAD_TRL_SETTINGS[case]
    with pytest.raises(SirenError) as refused:
        parse_args(trl_command({"MODEL_PATH": str(tiny_model_dir), **settings}, tmp_path))
    assert expected in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("value, folder", [("true", "max@10-long@True"), ("False", "max@10-long@False"),
                                           ("1", "max@10-long@True")])
def test_default_data_dir_is_named_by_siren_verl_data(value, folder, tiny_model_dir, tmp_path):
    """USE_LONG_HISTORY=true gave long@true in bash while stage 2 writes long@True: the launcher asks
    siren.verl_data for the folder name (and grpo_trl.py uses the same function)."""
    from siren.verl_data import default_verl_dir

    stand_in = tmp_path / "python"
    calls = tmp_path / "calls"
    stand_in.write_text(f"#!/bin/bash\n[[ \"$2\" == siren.verl_data ]] && exec {sys.executable} \"$@\"\n"
                        f"printf '%s\\n' \"$@\" > {calls}\n")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    env = {"PYTHON": str(stand_in), "DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir), "USE_LONG_HISTORY": value,
           "NUM_GPUS": "1"}
    assert run_launcher(env, tmp_path).returncode == 0
    expected = default_verl_dir("Movies", 10, value != "False")
    assert f"data.train_files='{expected}/train.parquet'" in calls.read_text().splitlines()
    assert str(expected) == f"data/Movies/verl/{folder}"


def test_a_bad_use_long_history_is_one_line(tiny_model_dir, tmp_path):
    env = {"DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir), "USE_LONG_HISTORY": "maybe", "NUM_GPUS": "1"}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: USE_LONG_HISTORY: expected a boolean (true/false), got 'maybe'\n"
