r"""Stage 3 on one node: GRPO with TRL's GRPOTrainer on the stage-2 parquet files (CPU or one GPU).

    python -m siren.grpo_trl --model ckpt/tiny-qwen3 --data_path data/Movies/verl/max@10-long@True \
        --output_dir ckpt --max_steps 2 --num_generations 2 --per_device_train_batch_size 2 \
        --gradient_accumulation_steps 1 --max_completion_length 16 --eval_strategy no --save_strategy no

Settings are parsed the way open-r1 parses them, `TrlParser((GRPOScriptArguments, GRPOConfig))`:
every GRPOConfig / TrainingArguments field is a flag under its own name (--learning_rate,
--num_train_epochs, --max_steps, --save_steps, --eval_steps, --beta, --num_generations,
--max_completion_length, --temperature, --report_to, --run_name, --seed, --gradient_checkpointing,
...), and `--config recipe.yaml` sets any of them from a YAML file (flags given as well win).
The SIREN settings are GRPOScriptArguments below (--model, --data_path, --data_name, --limit,
--eval_limit, --lora_r, --checkpoint_dir, --overwrite, ...). TRL's batch sizes count completions:
the defaults (--per_device_train_batch_size 32, --gradient_accumulation_steps 8, --num_generations 8)
are 4 prompts per micro batch and 32 prompts per optimizer step, as verl runs BATCH_SIZE=32
MICRO_BATCH_SIZE=4 ROLLOUT_N=8. main_grpo_amazon.sh runs this with BACKEND=trl and maps its
settings onto these flags.

Reads the same train/val parquet files and scores with the same reward (siren.reward) as the verl
launcher. Writes the trained model (LoRA merged in) with its tokenizer to
{output_dir}/GRPO_{data_name}_step{S}, with train_log.jsonl (TRL's logs, `reward` among them) and
manifest.json; TRL's own checkpoints go to --checkpoint_dir. The policy keeps float32 weights; on
a GPU the passes run under bf16 autocast (full fine-tuning at lr 1e-6 on bf16 weights would round
most updates away).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import GRPOConfig

from siren import SirenError
from siren.cli import run_main


def output_name(data_name: str, step: int) -> str:
    """`GRPO_{data_name}_step{S}`, the folder name both GRPO backends write."""
    return f"GRPO_{data_name}_step{step}"


@dataclass
class GRPOScriptArguments:
    """The SIREN settings of the TRL backend; the training settings are GRPOConfig's own fields."""

    model: str = field(metadata={"help": "local base model folder (model + tokenizer with a chat template)",
                                 "aliases": ["--model_path"]})
    data_path: str = field(metadata={"help": "folder with train.parquet and val.parquet from preprocess_grpo.py",
                                     "aliases": ["--data_dir"]})
    data_name: str = field(default="Movies", metadata={"help": "names the output folder GRPO_{data_name}_step{S}"})
    checkpoint_dir: str | None = field(
        default=None,
        metadata={"help": "TRL's intermediate checkpoints (--save_steps); unset: <output_dir>/trl/GRPO_{data_name}"})
    max_prompt_length: int = field(
        default=2048, metadata={"help": "train/val rows whose chat prompt is longer are dropped and counted"})
    limit: int | None = field(default=None, metadata={"help": "use only the first N train rows (unset: all)",
                                                      "aliases": ["--train_limit"]})
    eval_limit: int | None = field(default=256, metadata={"help": "val rows used for evaluation",
                                                          "aliases": ["--val_limit"]})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (all linear layers); 0 = full fine-tuning",
                                             "aliases": ["--lora_rank"]})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing GRPO_{data_name}_step{S} folder"})


@dataclass
class SirenGRPOConfig(GRPOConfig):
    """TRL's GRPOConfig with `--output_dir` meaning this stage's output folder (alias `--out_dir`).

    A module-level class: the trainer pickles its config into every checkpoint (training_args.bin).
    """

    output_dir: str = field(
        default="ckpt",
        metadata={"help": "where the trained model folder GRPO_{data_name}_step{S} goes; TRL's own "
                          "checkpoints go to --checkpoint_dir", "aliases": ["--out_dir"]})


def stage_defaults() -> dict:
    """This stage's defaults for GRPOConfig fields: the verl launcher's settings, and the device's precision."""
    import torch

    use_cuda = torch.cuda.is_available()
    return {
        "learning_rate": 1e-6,
        "beta": 0.001,                          # verl's kl_loss_coef (TRL's default is 0: no KL term)
        "num_train_epochs": 2,
        "num_generations": 8,
        "per_device_train_batch_size": 32,      # completions: 4 prompts x 8 generations
        "gradient_accumulation_steps": 8,       # 8 micro batches: 32 prompts per optimizer step
        "per_device_eval_batch_size": 32,
        "eval_strategy": "steps",
        "eval_steps": 20,
        "save_steps": 20,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": not use_cuda,
        "bf16": use_cuda and torch.cuda.is_bf16_supported(),  # autocast only: the weights stay float32
        "dataloader_num_workers": 0,
    }


def build_parser():
    from trl import TrlParser

    from siren.cli import hf_parser

    return hf_parser((GRPOScriptArguments, SirenGRPOConfig), __doc__, parser_class=TrlParser, **stage_defaults())


def parse_args(argv: list[str] | None = None):
    """(GRPOScriptArguments, GRPOConfig) from the command line and an optional `--config recipe.yaml`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--config" in argv:
        position = argv.index("--config")
        recipe = Path(argv[position + 1]) if position + 1 < len(argv) else None
        if recipe is None or not recipe.is_file():
            raise SirenError(f"--config needs a YAML recipe file, got {recipe or 'nothing'}")
    try:
        script_args, config = build_parser().parse_args_and_config(argv)
    except ValueError as err:  # GRPOConfig's own checks (batch divisibility, precision, ...) and recipe errors
        raise SirenError(" ".join(str(err).split())) from None
    if script_args.checkpoint_dir is None:
        script_args.checkpoint_dir = str(Path(config.output_dir) / "trl" / f"GRPO_{script_args.data_name}")
    if config.run_name is None:
        config.run_name = f"GRPO_{script_args.data_name}"
    return script_args, config


def validate(script_args: GRPOScriptArguments, config) -> None:
    from siren.verl_data import parquet_path

    if not (Path(script_args.model) / "config.json").is_file():
        raise SirenError(f"--model {script_args.model} is not a model folder (no config.json)")
    for split in ("train", "val"):
        path = parquet_path(script_args.data_path, split)
        if not path.is_file():
            raise SirenError(f"missing parquet split: {path} (run preprocess_grpo.py first)")
    for name in ("limit", "eval_limit", "max_prompt_length", "lora_alpha"):
        value = getattr(script_args, name)
        if value is not None and value < 1:
            raise SirenError(f"--{name} must be at least 1, got {value}")
    if script_args.lora_r < 0:
        raise SirenError(f"--lora_r must be >= 0 (0 = full fine-tuning), got {script_args.lora_r}")
    if config.max_steps <= 0 and config.num_train_epochs <= 0:
        raise SirenError("give --max_steps > 0 or --num_train_epochs > 0")
    if config.max_steps > 0:
        _check_target_free(script_args, config, config.max_steps)


def _check_target_free(script_args: GRPOScriptArguments, config, step: int) -> Path:
    from siren.io import check_outputs_free

    target = Path(config.output_dir) / output_name(script_args.data_name, step)
    check_outputs_free([target], script_args.overwrite)
    return target


def load_grpo_split(data_path, split: str, tokenizer, max_prompt_length: int, limit: int | None = None):
    """A `datasets.Dataset` of one parquet split for GRPOTrainer, without prompts over the length limit.

    Columns: `prompt` (the chat list), `ground_truth` and `data_source` (read by siren.reward.trl_reward),
    `index` (the parquet row). Returns (dataset, number of rows dropped for length).
    """
    from datasets import Dataset

    from siren.prompt_tokens import PromptTokenCounter
    from siren.verl_data import load_split_rows

    rows = load_split_rows(data_path, split, limit=limit)
    prompts = [row["prompt"] for row in rows]
    counter = PromptTokenCounter(tokenizer)
    counter.verify(prompts)
    lengths = counter.count(prompts)
    kept = [row for row, length in zip(rows, lengths, strict=True) if length <= max_prompt_length]
    records = [
        {
            "prompt": row["prompt"],
            "ground_truth": row["reward_model"]["ground_truth"],
            "data_source": row["data_source"],
            "index": int(row["extra_info"]["index"]),
        }
        for row in kept
    ]
    return Dataset.from_list(records), len(rows) - len(kept)


def load_policy(model_path: str | Path):
    """The policy with float32 master weights, on CPU and GPU alike.

    On a GPU, GRPOConfig(bf16=True) runs forward and backward under bf16 autocast while AdamW keeps
    updating float32 weights. Loaded in bfloat16, full fine-tuning at lr 1e-6 would barely move:
    Adam's first steps change a weight by about lr, far below half a bf16 ulp (about 6e-5 for a
    weight of 0.02), so most updates round away. TRL loads float32 by default for the same reason.
    """
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)


def train(script_args: GRPOScriptArguments, config):
    """Run GRPOTrainer; returns (trainer, counts of the rows used and dropped)."""
    from peft import LoraConfig
    from trl import GRPOTrainer

    from siren.reward import trl_reward
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(script_args.model)
    train_set, train_dropped = load_grpo_split(script_args.data_path, "train", tokenizer,
                                               script_args.max_prompt_length, script_args.limit)
    if len(train_set) == 0:
        raise SirenError(f"no train rows left: all are longer than --max_prompt_length {script_args.max_prompt_length}")
    eval_set, eval_dropped = None, 0
    if config.eval_strategy != "no":
        eval_set, eval_dropped = load_grpo_split(script_args.data_path, "val", tokenizer,
                                                 script_args.max_prompt_length, script_args.eval_limit)
    if train_dropped or eval_dropped:
        print(f"dropped {train_dropped} train and {eval_dropped} val rows longer than "
              f"{script_args.max_prompt_length} prompt tokens", file=sys.stderr)

    peft_config = None
    if script_args.lora_r > 0:
        peft_config = LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = GRPOTrainer(
        model=load_policy(script_args.model),  # float32; config.bf16 only autocasts
        reward_funcs=trl_reward,
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    prompts_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps // config.num_generations
    print(f"GRPO (TRL) on {config.device.type}: {len(train_set)} train prompts, {config.num_generations} responses "
          f"each, {prompts_per_step} prompts per step, lora_r {script_args.lora_r}")
    trainer.train()
    counts = {"train_rows": len(train_set), "train_rows_dropped_too_long": train_dropped,
              "val_rows": 0 if eval_set is None else len(eval_set), "val_rows_dropped_too_long": eval_dropped,
              "prompts_per_step": prompts_per_step}
    return trainer, counts


def save_trained(trainer, script_args: GRPOScriptArguments, config, counts: dict, seconds: float) -> Path:
    """Write GRPO_{data_name}_step{S} (model with LoRA merged, tokenizer, train_log.jsonl, manifest.json)."""
    from siren.io import atomic_path, atomic_write_jsonl, write_manifest
    from siren.verl_data import parquet_path

    step = int(trainer.state.global_step)
    target = _check_target_free(script_args, config, step)
    trained = trainer.model
    if script_args.lora_r > 0:
        trained = trained.merge_and_unload()  # a plain model that AutoModelForCausalLM reloads
    log_history = list(trainer.state.log_history)
    rewards = [entry["reward"] for entry in log_history if "reward" in entry]
    settings = {**config.to_dict(), **dataclasses.asdict(script_args), "output_dir": config.output_dir}
    with atomic_path(target) as tmp:
        trained.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
        atomic_write_jsonl(tmp / "train_log.jsonl", log_history)
        write_manifest(
            tmp, script="siren.grpo_trl", args=settings,
            inputs=[parquet_path(script_args.data_path, "train"), parquet_path(script_args.data_path, "val")],
            outputs=[target], seconds=seconds,
            counts={**counts, "steps": step, "reward_first": rewards[0] if rewards else None,
                    "reward_last": rewards[-1] if rewards else None},
            extra={"backend": "trl", "device": config.device.type},
        )
    return target


def main(argv: list[str] | None = None) -> None:
    script_args, config = parse_args(argv)
    validate(script_args, config)

    from siren.io import RunTimer, check_output_dir

    timer = RunTimer()
    output_dir = config.output_dir
    check_output_dir(script_args.checkpoint_dir)
    config.output_dir = script_args.checkpoint_dir  # GRPOTrainer writes its checkpoints there
    trainer, counts = train(script_args, config)
    config.output_dir = output_dir

    target = save_trained(trainer, script_args, config, counts, timer.seconds)
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    summary = ", ".join(f"{r:.3f}" for r in rewards[:3]) + (" ... " + f"{rewards[-1]:.3f}" if len(rewards) > 3 else "")
    print(f"mean reward per logged step: {summary or 'none logged'}")
    print(f"wrote {target} (step {trainer.state.global_step}, {'LoRA merged' if script_args.lora_r else 'full model'}) "
          f"in {timer.seconds:.1f}s; logs in {target / 'train_log.jsonl'}")
    if any(not math.isfinite(r) for r in rewards):
        print("warning: non-finite rewards were logged", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
