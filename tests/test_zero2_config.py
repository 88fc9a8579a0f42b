"""config_Zero2.yaml: accelerate reads it, the command line overrides it, DeepSpeed accepts it.

No CUDA is needed: the DeepSpeed config is built the way accelerate + the HF Trainer build it at
launch (plugin from the YAML, "auto" values filled from the training arguments) and then handed to
DeepSpeed's own config parser.
"""

from __future__ import annotations

import copy
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config_Zero2.yaml"


def _plugin_from_yaml():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    config = load_config_from_file(str(CONFIG))
    ds = config.deepspeed_config
    plugin = DeepSpeedPlugin(
        zero_stage=ds["zero_stage"],
        gradient_accumulation_steps=ds["gradient_accumulation_steps"],
        gradient_clipping=ds["gradient_clipping"],
        offload_optimizer_device=ds["offload_optimizer_device"],
        offload_param_device=ds["offload_param_device"],
        zero3_init_flag=ds["zero3_init_flag"],
    )
    plugin.set_mixed_precision(config.mixed_precision)
    return config, plugin


def test_accelerate_loads_zero2_bf16():
    from accelerate.utils import DistributedType

    config, plugin = _plugin_from_yaml()
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.mixed_precision == "bf16"
    assert config.deepspeed_config["zero_stage"] == 2
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == 2
    assert plugin.deepspeed_config["bf16"] == {"enabled": True}


def test_num_processes_is_overridden_by_the_command_line():
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(CONFIG), "--num_processes", "3", "train_hidden_mask.py"])
    args, _, _ = _validate_launch_command(args)
    assert args.num_processes == 3
    assert args.use_deepspeed and int(args.zero_stage) == 2 and args.mixed_precision == "bf16"


def test_deepspeed_accepts_the_resulting_config(tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    _, plugin = _plugin_from_yaml()
    # train_hidden_mask.py's defaults: per-device batch 4, no accumulation, max_grad_norm 1.0.
    training_args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                      gradient_accumulation_steps=1, bf16=True, use_cpu=True, report_to=[])
    filled = HfTrainerDeepSpeedConfig(copy.deepcopy(plugin.deepspeed_config))
    filled.trainer_config_process(training_args)
    assert not filled.mismatches, filled.mismatches
    ds_config = DeepSpeedConfig(copy.deepcopy(filled.config))
    assert ds_config.zero_optimization_stage == 2
    assert ds_config.bfloat16_config.enabled
    assert ds_config.train_micro_batch_size_per_gpu == 4
    assert ds_config.gradient_clipping == 1.0
