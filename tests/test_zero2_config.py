"""config_Zero2.yaml: accelerate reads it, DeepSpeed accepts it, train_hidden_mask.py's settings fill it.

No CUDA is needed: the DeepSpeed config is built the way accelerate + the HF Trainer build it at
launch (plugin from the YAML, "auto" values filled from the training arguments) and then handed to
DeepSpeed's own config parser.
"""

from __future__ import annotations

import copy
import os

from conftest import REPO, load_script

CONFIG = REPO / "config_Zero2.yaml"


def _plugin_as_launched(monkeypatch, *launch_args: str):
    """The DeepSpeedPlugin a process started by `accelerate launch --config_file config_Zero2.yaml ...`
    builds: the launcher turns the YAML and its flags into ACCELERATE_* variables, the plugin reads them."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIG), *launch_args, "train_hidden_mask.py"])
    args, defaults, _ = _validate_launch_command(args)
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    for key in [key for key in os.environ if key.startswith("ACCELERATE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    config = load_config_from_file(str(CONFIG))
    plugin.set_mixed_precision(config.mixed_precision)
    return config, plugin


def test_accelerate_loads_zero2_bf16(monkeypatch):
    from accelerate.utils import DistributedType

    config, plugin = _plugin_as_launched(monkeypatch)
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.mixed_precision == "bf16"
    assert config.deepspeed_config["zero_stage"] == 2
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
    assert plugin.deepspeed_config["bf16"] == {"enabled": True}


def test_the_scripts_own_settings_fill_the_launched_config(tmp_path, monkeypatch):
    """train_hidden_mask.py's parsed training config (TrainingArguments fields, the stage's defaults) under
    `accelerate launch --config_file config_Zero2.yaml`: DeepSpeed's "auto" values come from it."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    _, plugin = _plugin_as_launched(monkeypatch, "--num_processes", "1")
    # --bf16 true: what the unset default resolves to on a GPU with bf16 (the YAML's mixed precision);
    # accumulation and clipping given on the command line: the YAML leaves them "auto", the script decides
    _, config = load_script("train_hidden_mask.py").parse_args([
        "--model", "m", "--data_path", "d", "--teacher_hidden_path", "t", "--teacher_mask_path", "m.pt",
        "--output_dir", str(tmp_path), "--bf16", "true", "--gradient_accumulation_steps", "3", "--max_grad_norm", "0.5"])
    filled = HfTrainerDeepSpeedConfig(copy.deepcopy(plugin.deepspeed_config))
    filled.trainer_config_process(config)
    assert not filled.mismatches, filled.mismatches
    ds_config = DeepSpeedConfig(copy.deepcopy(filled.config))
    assert ds_config.train_micro_batch_size_per_gpu == 4  # the stage's per_device_train_batch_size
    assert ds_config.gradient_accumulation_steps == 3 and ds_config.gradient_clipping == 0.5
    assert ds_config.train_batch_size == 4 * 3  # one process
    assert ds_config.zero_optimization_stage == 2 and ds_config.bfloat16_config.enabled
