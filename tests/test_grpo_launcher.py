"""main_grpo_amazon.sh: the verl 0.9.1 config it composes (DRY_RUN=1) and its input checks."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

LAUNCHER = REPO / "main_grpo_amazon.sh"


def run_launcher(env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(LAUNCHER), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def composed(tiny_model_dir, verl_dir, tmp_path_factory) -> dict:
    """verl's composed config, from a directory other than the repo (paths must not depend on cwd)."""
    import yaml

    cwd = tmp_path_factory.mktemp("elsewhere")
    proc = run_launcher({"DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir),
                         "NUM_GPUS": "4", "LOGGER": "console,wandb"}, cwd, "trainer.val_before_train=False")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return yaml.safe_load(proc.stdout)


@pytest.mark.slow
def test_dry_run_sets_the_keys_verl_reads(composed, tiny_model_dir, verl_dir):
    actor_rollout_ref = composed["actor_rollout_ref"]
    actor, rollout, ref = actor_rollout_ref["actor"], actor_rollout_ref["rollout"], actor_rollout_ref["ref"]
    reward_fn = composed["reward"]["custom_reward_function"]
    assert reward_fn["name"] == "compute_score"
    reward_path = Path(reward_fn["path"])
    assert reward_path.is_absolute() and reward_path.resolve() == (REPO / "siren" / "reward.py").resolve()
    assert re.search(r"^def compute_score\(", reward_path.read_text(), flags=re.M)
    # the pre-0.9 top-level key is left alone: verl 0.9.1 reads reward.custom_reward_function
    assert composed["custom_reward_function"] == {"path": None, "name": None}
    assert rollout["name"] == "vllm"
    assert rollout["tensor_model_parallel_size"] == 1
    assert rollout["n"] == 8
    # only the *_per_gpu micro-batch keys are set
    assert actor["ppo_micro_batch_size"] is None and actor["ppo_micro_batch_size_per_gpu"] == 4
    assert rollout["log_prob_micro_batch_size"] is None and rollout["log_prob_micro_batch_size_per_gpu"] == 4
    assert ref["log_prob_micro_batch_size"] is None and ref["log_prob_micro_batch_size_per_gpu"] == 4
    assert composed["algorithm"]["adv_estimator"] == "grpo"
    assert composed["algorithm"]["use_kl_in_reward"] is False
    assert actor["use_kl_loss"] is True and actor["kl_loss_coef"] == 0.001 and actor["kl_loss_type"] == "low_var_kl"
    assert actor["optim"]["lr"] == 1e-6
    data = composed["data"]
    assert data["train_batch_size"] == 32 * 4 and actor["ppo_mini_batch_size"] == 32 * 4
    assert data["max_prompt_length"] == 2048 and data["max_response_length"] == 512
    assert data["train_files"] == str(verl_dir / "train.parquet") and data["val_files"] == str(verl_dir / "val.parquet")
    assert actor_rollout_ref["model"]["path"] == str(tiny_model_dir)
    trainer = composed["trainer"]
    assert trainer["total_epochs"] == 2 and trainer["save_freq"] == 20 and trainer["test_freq"] == 20
    assert trainer["n_gpus_per_node"] == 4 and trainer["nnodes"] == 1
    assert trainer["logger"] == ["console", "wandb"]
    assert trainer["project_name"] == "siren_grpo" and trainer["experiment_name"] == "GRPO_Movies"
    assert trainer["val_before_train"] is False  # extra Hydra overrides pass through


def test_launcher_uses_no_plus_prefixed_overrides():
    """`+key=value` would add a key verl never reads instead of failing on a wrong name."""
    overrides = re.findall(r"^\s+(\+?[a-z_]+\.[a-z_.]+)=", LAUNCHER.read_text(), flags=re.M)
    assert len(overrides) > 20
    assert not [key for key in overrides if key.startswith("+")]


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


def _fake_python(tmp_path: Path) -> tuple[str, Path]:
    """A PYTHON that only records that it was started, to prove the launcher stopped before it."""
    marker = tmp_path / "python_was_started"
    script = tmp_path / "fake_python"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), marker


@pytest.mark.parametrize("case", ["model_unset", "model_missing", "no_gpus", "missing_val", "bad_backend"])
def test_bad_settings_stop_before_anything_starts(case, tiny_model_dir, verl_dir, tmp_path):
    fake_python, marker = _fake_python(tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.parquet").write_bytes((verl_dir / "train.parquet").read_bytes())
    env = {"PYTHON": fake_python, "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2"}
    expected = {
        "model_unset": "set MODEL_PATH",
        "model_missing": "is not a model folder",
        "no_gpus": "NUM_GPUS=0",
        "missing_val": f"missing parquet split: {data_dir}/val.parquet",
        "bad_backend": "BACKEND must be verl or trl",
    }[case]
    if case == "model_unset":
        env["MODEL_PATH"] = ""
    elif case == "model_missing":
        env["MODEL_PATH"] = str(tmp_path / "no_such_model")
    elif case == "no_gpus":
        env["NUM_GPUS"] = "0"
    elif case == "missing_val":
        env["DATA_DIR"] = str(data_dir)
    else:
        env["BACKEND"] = "deepspeed"
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and expected in proc.stderr
    assert not marker.exists()


def test_after_training_the_latest_checkpoint_is_merged(tiny_model_dir, verl_dir, tmp_path):
    """The post-training steps, with verl's trainer and merger replaced by stand-ins (no GPU here)."""
    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python_stand_in"
    stand_in.write_text(f"""#!/bin/bash
if [[ "$1 $2" == "-m verl.trainer.main_ppo" ]]; then
    for arg in "$@"; do [[ "$arg" == trainer.default_local_dir=* ]] && dir="${{arg#*=}}" && dir="${{dir//\\'/}}"; done
    mkdir -p "$dir/global_step_7/actor" && echo 7 > "$dir/latest_checkpointed_iteration.txt"
    echo "main_ppo $*" >> {calls}
elif [[ "$1 $2" == "-m verl.model_merger" ]]; then
    while [[ $# -gt 0 ]]; do case "$1" in --local_dir) local_dir=$2;; --target_dir) target=$2;; esac; shift; done
    mkdir -p "$target" && echo '{{}}' > "$target/config.json"
    echo "merge $local_dir" >> {calls}
else
    exec {sys.executable} "$@"
fi
""")
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IEXEC)
    env = {"PYTHON": str(stand_in), "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2",
           "TRAINER_DIR": str(tmp_path / "trainer"), "CKPT_DIR": str(tmp_path / "ckpt")}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = tmp_path / "ckpt" / "GRPO_Movies_step7"
    assert (merged / "config.json").exists()
    manifest = (merged / "manifest.json").read_text()
    assert '"step": "7"' in manifest and '"backend": "verl"' in manifest
    assert f"merge {tmp_path / 'trainer'}/global_step_7/actor" in calls.read_text()
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["GRPO_Movies_step7"]  # no partial left
    again = run_launcher(env, tmp_path)
    assert again.returncode == 2 and "output already exists" in again.stderr
    assert run_launcher({**env, "OVERWRITE": "1"}, tmp_path).returncode == 0


def test_trl_dry_run_maps_the_settings_onto_grpo_trl_flags(tiny_model_dir, verl_dir, tmp_path):
    fake_python, marker = _fake_python(tmp_path)
    env = {"PYTHON": fake_python, "BACKEND": "trl", "DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir),
           "DATA_DIR": str(verl_dir), "NUM_GPUS": "0", "LORA_RANK": "8", "LOGGER": "console,wandb"}
    proc = run_launcher(env, tmp_path, "--val_limit", "3")
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.split()
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert command[1:3] == ["-m", "siren.grpo_trl"]
    assert flags["--num_generations"] == "8" and flags["--prompts_per_step"] == "32"
    assert flags["--lr"] == "1e-6" and flags["--beta"] == "0.001"
    assert flags["--max_prompt_length"] == "2048" and flags["--max_completion_length"] == "512"
    assert flags["--epochs"] == "2" and flags["--save_freq"] == "20" and flags["--test_freq"] == "20"
    assert flags["--lora_rank"] == "8" and flags["--report_to"] == "wandb" and flags["--val_limit"] == "3"
    assert flags["--ckpt_dir"] == "ckpt" and flags["--data_name"] == "Movies"
    assert not marker.exists()
