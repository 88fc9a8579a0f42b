r"""Stage 3 on one device: GRPO with TRL's GRPOTrainer on the stage-2 parquet files (CPU or one GPU).

    python grpo_trl.py --model ckpt/tiny-qwen3 --data_path data/Movies/verl/max@10-long@True \
        --output_dir ckpt --max_steps 2 --num_generations 2 --per_device_train_batch_size 2 \
        --prompts_per_step 1 --max_completion_length 16 --eval_strategy no --save_strategy no
    python grpo_trl.py --config recipes/grpo_trl_lora_bf16.yaml --model ckpt/Qwen3-4B   # settings from a YAML recipe

Parsed as open-r1's grpo.py is, `TrlParser((GRPOScriptArguments, GRPOConfig, ModelConfig))`: every
GRPOConfig / TrainingArguments field is a flag under its own name (--learning_rate, --beta,
--num_generations, --max_completion_length, --temperature, --max_steps, --save_steps, ...), every
ModelConfig field too (--dtype, --use_peft, --lora_r, --lora_alpha, --attn_implementation, ...),
and the SIREN settings below (--data_path, --category, --prompts_per_step, --limit, ...).
`--config recipe.yaml` sets any of them. A value given in the recipe or as a flag beats this
stage's default (the verl launcher's: lr 1e-6, beta 0.001, 8 generations, 4 sequences per micro
batch, 32 prompts per step, 2 epochs); a setting given twice (recipe and flag, or two flags) is
refused, and every value is type- and range-checked before anything loads. Batch sizes count
sequences (prompt + one response), as verl's micro batches do. main_grpo_amazon.sh runs this with
BACKEND=trl, passing only the settings given to it.

On a GPU the run is checked against the card's memory before the model loads: the number of
sequences generate() takes at once is chosen to fit (unless --steps_per_generation or
--generation_batch_size is given), or the run is refused with the estimate and the settings that
would fit (--beta 0, --use_peft true, --dtype bfloat16). Writes the trained model (LoRA merged in)
with its tokenizer to {output_dir}/GRPO_{data_name}_step{S}, with train_log.jsonl (TRL's logs,
`reward` among them) and manifest.json; TRL's own checkpoints go to --checkpoint_dir.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from siren.grpo_trl import parse_args, run

    run(*parse_args(argv, doc=__doc__))


if __name__ == "__main__":
    from siren.cli import run_main

    sys.exit(run_main(main))
