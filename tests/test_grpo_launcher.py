"""main_grpo_amazon.sh: the verl 0.9.1 config it composes (DRY_RUN=1) and its input checks."""

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
    assert trainer["resume_mode"] == "disable"  # stated, not verl's silent "auto"


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


def test_launcher_uses_no_plus_prefixed_overrides():
    """`+key=value` would add a key verl never reads instead of failing on a wrong name. The one
    exception adds to model.override_config, an empty open dict in verl's schema whose
    attn_implementation verl reads (checked through verl in the test above)."""
    overrides = re.findall(r"^\s+(\+?[a-z_]+\.[a-z_.]+)=", LAUNCHER.read_text(), flags=re.M)
    assert len(overrides) > 20
    plus = [key for key in overrides if key.startswith("+")]
    assert plus == ["+actor_rollout_ref.model.override_config.attn_implementation"]


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
    """A PYTHON that only records that it was started (appending its arguments, one a line, to the marker)."""
    marker = tmp_path / "python_was_started"
    script = tmp_path / "fake_python"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" >> {marker}\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script), marker


BAD_SETTINGS = {
    "model_unset": ({"MODEL_PATH": ""}, "set MODEL_PATH"),
    "model_missing": ({"MODEL_PATH": "no_such_model"}, "is not a model folder"),
    "no_gpus": ({"NUM_GPUS": "0"}, "NUM_GPUS=0"),
    "missing_val": ({"DATA_DIR": "data"}, "missing parquet split: data/val.parquet"),
    "bad_backend": ({"BACKEND": "deepspeed"}, "BACKEND must be verl or trl"),
    "bad_attention": ({"ATTN_IMPLEMENTATION": "flash_attention_3"}, "ATTN_IMPLEMENTATION must be"),
    "bad_resume_mode": ({"RESUME_MODE": "yes"}, "RESUME_MODE must be disable, auto or resume_path"),
    "resume_path_unset": ({"RESUME_MODE": "resume_path"}, "RESUME_MODE=resume_path needs RESUME_FROM_PATH"),
    "trl_resume": ({"BACKEND": "trl", "RESUME_MODE": "auto"}, "is read by BACKEND=verl only"),
    "checkpoint_exists": ({"TRAINER_DIR": "trainer"}, "TRAINER_DIR=trainer already holds a verl checkpoint (step 7)"),
}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_bad_settings_stop_before_anything_starts(case, tiny_model_dir, verl_dir, tmp_path):
    fake_python, marker = _fake_python(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").write_bytes((verl_dir / "train.parquet").read_bytes())
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "latest_checkpointed_iteration.txt").write_text("7\n")
    settings, expected = BAD_SETTINGS[case]
    env = {"PYTHON": fake_python, "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2",
           **settings}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and expected in proc.stderr and proc.stderr.count("\n") == 1
    assert not marker.exists()


def test_resume_settings_reach_verl(tiny_model_dir, verl_dir, tmp_path):
    fake_python, marker = _fake_python(tmp_path)
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "latest_checkpointed_iteration.txt").write_text("7\n")
    env = {"PYTHON": fake_python, "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir), "NUM_GPUS": "2",
           "TRAINER_DIR": "trainer", "DRY_RUN": "1"}
    assert run_launcher(env, tmp_path).returncode == 0  # a dry run starts nothing, so it is not refused
    assert "trainer.resume_mode=disable" in marker.read_text().splitlines()
    marker.unlink()
    run_launcher({**env, "RESUME_MODE": "resume_path", "RESUME_FROM_PATH": "trainer/global_step_7"}, tmp_path)
    args = marker.read_text().splitlines()
    assert "trainer.resume_mode=resume_path" in args and "trainer.resume_from_path='trainer/global_step_7'" in args
    marker.unlink()
    # RESUME_MODE=auto trains on from the checkpoint: verl is started (here a stand-in that writes nothing)
    proc = run_launcher({**env, "DRY_RUN": "0", "RESUME_MODE": "auto"}, tmp_path)
    assert "trainer.resume_mode=auto" in marker.read_text().splitlines()
    assert "already holds" not in proc.stderr


@pytest.mark.parametrize("has_venv", [True, False])
def test_python_defaults_to_the_repo_venv(has_venv, tiny_model_dir, verl_dir, tmp_path):
    """With PYTHON unset, the launcher runs <repo>/.venv/bin/python (make install's venv) when it exists."""
    repo = tmp_path / "repo"
    (repo / "siren").mkdir(parents=True)
    (repo / "siren" / "reward.py").write_text("")
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
    assert proc.stdout.split()[0] == (str(repo / ".venv" / "bin" / "python") if has_venv else "python3")


def _verl_stand_in(tmp_path: Path, merger_output: Path | None = None) -> tuple[Path, Path]:
    """A PYTHON that plays verl's trainer (writes global_step_7) and merger (copies `merger_output`)."""
    calls = tmp_path / "calls.txt"
    stand_in = tmp_path / "python_stand_in"
    merge = f'cp -r {merger_output}/. "$target"' if merger_output else "echo '{}' > \"$target/config.json\""
    stand_in.write_text(f"""#!/bin/bash
if [[ "$1 $2" == "-m verl.trainer.main_ppo" ]]; then
    for arg in "$@"; do [[ "$arg" == trainer.default_local_dir=* ]] && dir="${{arg#*=}}" && dir="${{dir//\\'/}}"; done
    mkdir -p "$dir/global_step_7/actor" && echo 7 > "$dir/latest_checkpointed_iteration.txt"
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
    manifest = (merged / "manifest.json").read_text()
    assert '"step": "7"' in manifest and '"backend": "verl"' in manifest
    assert f"merge {tmp_path / 'trainer'}/global_step_7/actor" in calls.read_text()
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["GRPO_Movies_step7"]  # no partial left
    env["RESUME_MODE"] = "auto"  # the trainer folder now holds step 7
    again = run_launcher(env, tmp_path)
    assert again.returncode == 2 and "output already exists" in again.stderr
    assert run_launcher({**env, "OVERWRITE": "1"}, tmp_path).returncode == 0


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
    from siren import SirenError
    from siren.grpo_verl import merge_lora_adapter

    adapter = tmp_path / "lora_adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 0, "target_modules": ["q_proj"]}')
    with pytest.raises(SirenError, match="lora_alpha=0"):
        merge_lora_adapter(tmp_path)
    assert merge_lora_adapter(tmp_path / "no_adapter_here") is None


def test_trl_dry_run_maps_the_settings_onto_grpo_trl_flags(tiny_model_dir, verl_dir, tmp_path):
    """BACKEND=trl: the launcher's settings become GRPOConfig fields under their HF names (TRL counts
    completions, so a micro batch is MICRO_BATCH_SIZE x ROLLOUT_N and BATCH_SIZE / MICRO_BATCH_SIZE of
    them make one step) and SIREN's own flags."""
    fake_python, marker = _fake_python(tmp_path)
    env = {"PYTHON": fake_python, "BACKEND": "trl", "DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir),
           "DATA_DIR": str(verl_dir), "NUM_GPUS": "0", "LORA_RANK": "8", "LOGGER": "console,wandb"}
    proc = run_launcher(env, tmp_path, "--val_limit", "3")
    assert proc.returncode == 0, proc.stderr
    command = proc.stdout.split()
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert command[1:3] == ["-m", "siren.grpo_trl"]
    assert flags["--num_generations"] == "8"
    assert flags["--per_device_train_batch_size"] == "32" and flags["--gradient_accumulation_steps"] == "8"
    assert flags["--per_device_eval_batch_size"] == "32"
    assert flags["--learning_rate"] == "1e-6" and flags["--beta"] == "0.001"
    assert flags["--max_prompt_length"] == "2048" and flags["--max_completion_length"] == "512"
    assert flags["--num_train_epochs"] == "2" and flags["--max_steps"] == "-1"
    assert flags["--save_strategy"] == "steps" and flags["--save_steps"] == "20"
    assert flags["--eval_strategy"] == "steps" and flags["--eval_steps"] == "20"
    assert flags["--lora_r"] == "8" and flags["--report_to"] == "wandb" and flags["--val_limit"] == "3"
    assert flags["--output_dir"] == "ckpt" and flags["--data_name"] == "Movies"
    assert flags["--model"] == str(tiny_model_dir) and flags["--data_path"] == str(verl_dir)
    assert flags["--checkpoint_dir"] == "ckpt/trl/siren_grpo/GRPO_Movies"
    assert not marker.exists()

    settings = {"BATCH_SIZE": "4", "MICRO_BATCH_SIZE": "2", "ROLLOUT_N": "3", "MAX_STEPS": "5", "SAVE_FREQ": "0",
                "TEST_FREQ": "0", "CKPT_DIR": "models", "TRAINER_DIR": "raw"}
    command = run_launcher({**env, **settings}, tmp_path).stdout.split()
    flags = dict(zip(command[3::2], command[4::2], strict=False))
    assert flags["--per_device_train_batch_size"] == "6" and flags["--gradient_accumulation_steps"] == "2"
    assert flags["--max_steps"] == "5" and flags["--save_strategy"] == "no" and flags["--eval_strategy"] == "no"
    assert "--save_steps" not in flags and "--eval_steps" not in flags
    assert flags["--output_dir"] == "models" and flags["--checkpoint_dir"] == "raw"


def test_the_trl_command_parses_into_grpo_config(tiny_model_dir, verl_dir, tmp_path):
    """What the launcher passes is what siren.grpo_trl's parser reads (no flag of an older name)."""
    from siren.grpo_trl import parse_args

    fake_python, _ = _fake_python(tmp_path)
    env = {"PYTHON": fake_python, "BACKEND": "trl", "DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir),
           "DATA_DIR": str(verl_dir), "NUM_GPUS": "0", "BATCH_SIZE": "4", "MICRO_BATCH_SIZE": "2", "ROLLOUT_N": "2",
           "LR": "2e-6", "KL_COEF": "0", "EPOCHS": "3", "TEST_FREQ": "5", "LORA_RANK": "4", "OVERWRITE": "1"}
    command = shlex.split(run_launcher(env, tmp_path).stdout)
    script, config = parse_args(command[3:])
    assert (script.model, script.data_path, script.lora_r, script.overwrite) == (str(tiny_model_dir), str(verl_dir), 4, True)
    assert (config.learning_rate, config.beta, config.num_train_epochs, config.eval_steps) == (2e-6, 0.0, 3, 5)
    assert config.per_device_train_batch_size * config.gradient_accumulation_steps // config.num_generations == 4


BAD_NUMBERS = {
    "batch_zero": ({"BATCH_SIZE": "0"}, "BATCH_SIZE must be a whole number >= 1, got '0'"),
    "batch_word": ({"BATCH_SIZE": "abc"}, "BATCH_SIZE must be a whole number >= 1, got 'abc'"),
    "batch_huge": ({"BATCH_SIZE": "99999999999"}, "BATCH_SIZE must be a whole number >= 1"),
    "micro_zero": ({"MICRO_BATCH_SIZE": "0"}, "MICRO_BATCH_SIZE must be a whole number >= 1"),
    "batch_not_multiple": ({"BATCH_SIZE": "6"}, "BATCH_SIZE (6) must be a multiple of MICRO_BATCH_SIZE (4)"),
    "rollout_one": ({"ROLLOUT_N": "1"}, "ROLLOUT_N must be a whole number >= 2, got '1'"),
    "prompt_length": ({"MAX_PROMPT_LENGTH": "2k"}, "MAX_PROMPT_LENGTH must be a whole number >= 1"),
    "response_length": ({"MAX_RESPONSE_LENGTH": "0"}, "MAX_RESPONSE_LENGTH must be a whole number >= 1"),
    "epochs_fraction": ({"EPOCHS": "1.5"}, "EPOCHS must be a whole number >= 1, got '1.5'"),
    "max_steps_negative": ({"MAX_STEPS": "-1"}, "MAX_STEPS must be a whole number >= 0"),
    "save_freq": ({"SAVE_FREQ": "x"}, "SAVE_FREQ must be a whole number >= 0"),
    "test_freq": ({"TEST_FREQ": "-5"}, "TEST_FREQ must be a whole number >= 0"),
    "lora_rank": ({"LORA_RANK": "eight"}, "LORA_RANK must be a whole number >= 0"),
    "lr_zero": ({"LR": "0"}, "LR must be a positive number, got '0'"),
    "lr_negative": ({"LR": "-1e-6"}, "LR must be a positive number, got '-1e-6'"),
    "lr_word": ({"LR": "fast"}, "LR must be a positive number, got 'fast'"),
    "kl_negative": ({"KL_COEF": "-0.1"}, "KL_COEF must be a non-negative number, got '-0.1'"),
    "gpu_memory_zero": ({"GPU_MEMORY_UTILIZATION": "0"}, "GPU_MEMORY_UTILIZATION must be a positive number"),
    "gpu_memory_over_one": ({"GPU_MEMORY_UTILIZATION": "1.2"}, "GPU_MEMORY_UTILIZATION must be in (0, 1], got '1.2'"),
    "overwrite_word": ({"OVERWRITE": "yes"}, "OVERWRITE must be 0 or 1, got 'yes'"),
    "max_history_zero": ({"MAX_HISTORY": "0"}, "MAX_HISTORY must be a whole number >= 1"),
}


@pytest.mark.parametrize("backend", ["verl", "trl"])
@pytest.mark.parametrize("case", list(BAD_NUMBERS))
def test_bad_numbers_stop_before_anything_starts(case, backend, tiny_model_dir, verl_dir, tmp_path):
    """Issue 14: BATCH_SIZE=0 composed a verl config with batch 0, BATCH_SIZE=abc died on an unbound
    variable, and TRL with BATCH_SIZE=0 ended in a traceback."""
    fake_python, marker = _fake_python(tmp_path)
    settings, expected = BAD_NUMBERS[case]
    for dry_run in ("1", "0"):
        env = {"PYTHON": fake_python, "BACKEND": backend, "DRY_RUN": dry_run, "MODEL_PATH": str(tiny_model_dir),
               "DATA_DIR": str(verl_dir), "NUM_GPUS": "2", **settings}
        proc = run_launcher(env, tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"error: {expected}")
        assert proc.stderr.count("\n") == 1 and not marker.exists()


def test_accepted_numbers_are_passed_on_in_decimal(tiny_model_dir, verl_dir, tmp_path):
    fake_python, marker = _fake_python(tmp_path)
    env = {"PYTHON": fake_python, "DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir), "DATA_DIR": str(verl_dir),
           "NUM_GPUS": "2", "BATCH_SIZE": "08", "MICRO_BATCH_SIZE": "2", "LR": "5e-7", "KL_COEF": "0",
           "GPU_MEMORY_UTILIZATION": "1", "MAX_STEPS": "010"}
    assert run_launcher(env, tmp_path).returncode == 0
    args = marker.read_text().splitlines()
    assert "data.train_batch_size=16" in args and "actor_rollout_ref.actor.optim.lr=5e-7" in args
    assert "trainer.total_training_steps=10" in args and "actor_rollout_ref.actor.kl_loss_coef=0" in args


@pytest.mark.parametrize("value, folder", [("true", "max@10-long@True"), ("False", "max@10-long@False"),
                                           ("1", "max@10-long@True")])
def test_default_data_dir_is_named_by_siren_verl_data(value, folder, tiny_model_dir, verl_dir, tmp_path):
    """USE_LONG_HISTORY=true gave long@true in bash while stage 2 writes long@True: the launcher now
    asks siren.verl_data for the folder name."""
    from siren.verl_data import default_verl_dir

    (tmp_path / "data" / "Movies" / "verl" / folder).mkdir(parents=True)
    for stem in ("train", "val"):
        shutil.copy(verl_dir / f"{stem}.parquet", tmp_path / "data" / "Movies" / "verl" / folder)
    env = {"BACKEND": "trl", "DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir), "USE_LONG_HISTORY": value,
           "NUM_GPUS": "0", "PYTHONPATH": str(REPO)}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    flags = dict(zip(proc.stdout.split()[3::2], proc.stdout.split()[4::2], strict=False))
    assert flags["--data_path"] == f"data/Movies/verl/{folder}" == str(default_verl_dir("Movies", 10, value != "False"))


def test_a_bad_use_long_history_is_one_line(tiny_model_dir, tmp_path):
    env = {"BACKEND": "trl", "DRY_RUN": "1", "MODEL_PATH": str(tiny_model_dir), "USE_LONG_HISTORY": "maybe",
           "NUM_GPUS": "0", "PYTHONPATH": str(REPO)}
    proc = run_launcher(env, tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: USE_LONG_HISTORY: expected a boolean (true/false), got 'maybe'\n"
