r"""Stage 3 on one node: GRPO with TRL's GRPOTrainer on the stage-2 parquet files (CPU or one GPU).

    python -m siren.grpo_trl --model_path ckpt/tiny-qwen3 --data_dir data/Movies/verl/max@10-long@True \
        --data_name Movies --max_steps 2 --num_generations 2 --prompts_per_step 2 --prompts_per_micro_batch 1 \
        --max_completion_length 16 --test_freq 0 --save_freq 0

main_grpo_amazon.sh runs this with BACKEND=trl, mapping its settings onto these flags. It reads the
same train/val parquet files and scores with the same reward (siren.reward) as the verl launcher,
and writes the trained model (LoRA merged in) with its tokenizer to
{ckpt_dir}/GRPO_{data_name}_step{S}, with train_log.jsonl (TRL's logs, `reward` among them) and
manifest.json. The policy keeps float32 weights; on a GPU the passes run under bf16 autocast
(full fine-tuning at lr 1e-6 on bf16 weights would round most updates away).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from siren import SirenError
from siren.cli import run_main, str2bool


def output_name(data_name: str, step: int) -> str:
    """`GRPO_{data_name}_step{S}`, the folder name both GRPO backends write."""
    return f"GRPO_{data_name}_step{step}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model_path", required=True, help="local base model folder (model + tokenizer with a chat template)")
    add("--data_dir", required=True, help="folder with train.parquet and val.parquet from preprocess_grpo.py")
    add("--data_name", default="Movies", help="names the output folder GRPO_{data_name}_step{S} (default: %(default)s)")
    add("--ckpt_dir", default="ckpt", help="where the trained model folder goes (default: %(default)s)")
    add("--output_dir", default="ckpt/trl/siren_grpo",
        help="TRL's working folder: intermediate checkpoints (default: %(default)s)")
    add("--epochs", type=float, default=2, help="passes over train.parquet (default: %(default)s)")
    add("--max_steps", type=int, default=0, help="stop after this many optimizer steps; 0 = run --epochs (default: %(default)s)")
    add("--num_generations", type=int, default=8, help="responses per prompt, verl's rollout.n (default: %(default)s)")
    add("--prompts_per_step", type=int, default=32, help="prompts per optimizer step (default: %(default)s)")
    add("--prompts_per_micro_batch", type=int, default=4,
        help="prompts per forward/backward pass; gradients accumulate up to --prompts_per_step (default: %(default)s)")
    add("--lr", type=float, default=1e-6, help="learning rate (default: %(default)s)")
    add("--beta", type=float, default=0.001, help="KL coefficient against the reference model (default: %(default)s)")
    add("--max_prompt_length", type=int, default=2048,
        help="train/val rows whose chat prompt is longer are dropped and counted (default: %(default)s)")
    add("--max_completion_length", type=int, default=512, help="generated tokens per response (default: %(default)s)")
    add("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    add("--save_freq", type=int, default=20, help="steps between checkpoints in --output_dir; 0 = none (default: %(default)s)")
    add("--test_freq", type=int, default=20, help="steps between reward evaluations on val.parquet; 0 = none (default: %(default)s)")
    add("--val_limit", type=int, default=256, help="val rows used for evaluation (default: %(default)s)")
    add("--train_limit", type=int, default=None, help="use only the first N train rows (default: all)")
    add("--lora_rank", type=int, default=0, help="LoRA rank; 0 = full fine-tuning (default: %(default)s)")
    add("--lora_alpha", type=int, default=32, help="LoRA alpha (default: %(default)s)")
    add("--gradient_checkpointing", type=str2bool, default=True,
        help="trade compute for memory: true/false (default: %(default)s)")
    add("--logging_steps", type=int, default=1, help="steps between log lines (default: %(default)s)")
    add("--report_to", default="none", help="none or wandb (default: %(default)s)")
    add("--run_name", default=None, help="run name for the logger (default: the output folder name)")
    add("--seed", type=int, default=42, help="random seed (default: %(default)s)")
    add("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    from siren.verl_data import parquet_path

    if not (Path(args.model_path) / "config.json").is_file():
        raise SirenError(f"--model_path {args.model_path} is not a model folder (no config.json)")
    for split in ("train", "val"):
        path = parquet_path(args.data_dir, split)
        if not path.is_file():
            raise SirenError(f"missing parquet split: {path} (run preprocess_grpo.py first)")
    if args.num_generations < 2:
        raise SirenError(f"--num_generations must be >= 2 (GRPO compares responses within a group), got {args.num_generations}")
    if args.prompts_per_micro_batch < 1 or args.prompts_per_step % args.prompts_per_micro_batch:
        raise SirenError(f"--prompts_per_step ({args.prompts_per_step}) must be a positive multiple of "
                         f"--prompts_per_micro_batch ({args.prompts_per_micro_batch})")
    if args.max_steps < 0 or args.save_freq < 0 or args.test_freq < 0:
        raise SirenError("--max_steps, --save_freq and --test_freq must be >= 0")
    if args.max_steps == 0 and args.epochs <= 0:
        raise SirenError("give --max_steps > 0 or --epochs > 0")
    if args.report_to not in {"none", "wandb"}:
        raise SirenError(f"--report_to must be none or wandb, got {args.report_to!r}")
    if args.max_steps > 0:
        _check_target_free(args, args.max_steps)


def _check_target_free(args: argparse.Namespace, step: int) -> Path:
    from siren.io import check_outputs_free

    target = Path(args.ckpt_dir) / output_name(args.data_name, step)
    check_outputs_free([target], args.overwrite)
    return target


def load_grpo_split(data_dir, split: str, tokenizer, max_prompt_length: int, limit: int | None = None):
    """A `datasets.Dataset` of one parquet split for GRPOTrainer, without prompts over the length limit.

    Columns: `prompt` (the chat list), `ground_truth` and `data_source` (read by siren.reward.trl_reward),
    `index` (the parquet row). Returns (dataset, number of rows dropped for length).
    """
    from datasets import Dataset

    from siren.verl_data import PromptTokenCounter, load_split_rows

    rows = load_split_rows(data_dir, split, limit=limit)
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    validate(args)

    import torch
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from siren.io import RunTimer, atomic_path, atomic_write_jsonl, write_manifest
    from siren.reward import trl_reward
    from siren.tokenization import load_tokenizer
    from siren.verl_data import parquet_path

    timer = RunTimer()
    use_cuda = torch.cuda.is_available()
    use_bf16 = use_cuda and torch.cuda.is_bf16_supported()
    tokenizer = load_tokenizer(args.model_path)
    train_set, train_dropped = load_grpo_split(args.data_dir, "train", tokenizer, args.max_prompt_length, args.train_limit)
    if len(train_set) == 0:
        raise SirenError(f"no train rows left: all are longer than --max_prompt_length {args.max_prompt_length}")
    eval_set, eval_dropped = None, 0
    if args.test_freq > 0:
        eval_set, eval_dropped = load_grpo_split(args.data_dir, "val", tokenizer, args.max_prompt_length, args.val_limit)
    if train_dropped or eval_dropped:
        print(f"dropped {train_dropped} train and {eval_dropped} val rows longer than {args.max_prompt_length} prompt tokens",
              file=sys.stderr)

    model = load_policy(args.model_path)  # float32; bf16=use_bf16 below only autocasts
    peft_config = None
    if args.lora_rank > 0:
        peft_config = LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, target_modules="all-linear",
                                 task_type="CAUSAL_LM")

    # TRL's batch sizes count completions: a micro batch holds prompts_per_micro_batch groups of
    # num_generations responses, and one generation round (= one optimizer step) covers prompts_per_step prompts.
    completions_per_micro_batch = args.prompts_per_micro_batch * args.num_generations
    accumulation = args.prompts_per_step // args.prompts_per_micro_batch
    config = GRPOConfig(
        output_dir=args.output_dir,
        run_name=args.run_name or f"GRPO_{args.data_name}",
        use_cpu=not use_cuda,
        bf16=use_bf16,
        seed=args.seed,
        learning_rate=args.lr,
        beta=args.beta,
        num_generations=args.num_generations,
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        per_device_train_batch_size=completions_per_micro_batch,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=completions_per_micro_batch,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps > 0 else -1,
        gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_freq > 0 else "no",
        save_steps=max(args.save_freq, 1),  # unused when save_strategy is "no"
        eval_strategy="steps" if eval_set is not None else "no",
        eval_steps=args.test_freq or None,
        report_to=args.report_to,
        dataloader_num_workers=0,
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=trl_reward,
        args=config,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    device = "cuda" if use_cuda else "cpu"
    print(f"GRPO (TRL) on {device}: {len(train_set)} train prompts, {args.num_generations} responses each, "
          f"{args.prompts_per_step} prompts per step, lora_rank {args.lora_rank}")
    trainer.train()

    step = int(trainer.state.global_step)
    target = _check_target_free(args, step)
    trained = trainer.model
    if peft_config is not None:
        trained = trained.merge_and_unload()  # a plain model that AutoModelForCausalLM reloads
    log_history = list(trainer.state.log_history)
    rewards = [entry["reward"] for entry in log_history if "reward" in entry]
    with atomic_path(target) as tmp:
        trained.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_jsonl(tmp / "train_log.jsonl", log_history)
        write_manifest(
            tmp, script="siren.grpo_trl", args=args,
            inputs=[parquet_path(args.data_dir, "train"), parquet_path(args.data_dir, "val")],
            outputs=[target], seconds=timer.seconds,
            counts={"train_rows": len(train_set), "train_rows_dropped_too_long": train_dropped,
                    "val_rows": 0 if eval_set is None else len(eval_set), "val_rows_dropped_too_long": eval_dropped,
                    "steps": step, "reward_first": rewards[0] if rewards else None,
                    "reward_last": rewards[-1] if rewards else None},
            extra={"backend": "trl", "device": device},
        )
    summary = ", ".join(f"{r:.3f}" for r in rewards[:3]) + (" ... " + f"{rewards[-1]:.3f}" if len(rewards) > 3 else "")
    print(f"mean reward per logged step: {summary or 'none logged'}")
    print(f"wrote {target} (step {step}, {'LoRA merged' if peft_config else 'full model'}) in {timer.seconds:.1f}s; "
          f"logs in {target / 'train_log.jsonl'}")
    if any(not math.isfinite(r) for r in rewards):
        print("warning: non-finite rewards were logged", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(run_main(main))
