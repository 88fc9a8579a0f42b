"""Stage 5: train LoRA adapters so the answer-only context reproduces the teacher's hidden states.

For every training row whose CoT prediction was right (stage 4a mask), the student reads the
answer-only prompt (stage 4c) and its hidden state of every layer at the end of `<answer>` is pulled
towards the teacher's state at the same token after prompt + CoT (stage 4b). Writes
`<output_dir>/adapter/`, `<output_dir>/merged/` (what inference_ao_ddp.py --model loads),
`train_log.jsonl` and `manifest.json`.

    accelerate launch --config_file config_Zero2.yaml --num_processes 8 train_hidden_mask.py \
        --model ckpt/GRPO_Movies_step100 \
        --instruction_path data/Movies/hidden/max@10-long@True \
        --teacher_hidden_path results_hidden/Movies \
        --teacher_mask_path results_train/Movies/mask.pt \
        --output_dir ckpt/AO_Movies_HA

On a CPU (tests, demo) run the same flags under `python train_hidden_mask.py ...` or
`accelerate launch --cpu train_hidden_mask.py ...`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from siren.cli import run_main, str2bool

BEST_METRICS = ("rating_rmse", "rating_mae", "rating_acc", "loss")


def build_parser() -> argparse.ArgumentParser:
    from siren.alignment import LOSS_TYPES, PEFT_FAMILIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="the GRPO model (Hugging Face directory) to align")
    add("--instruction_path", required=True, help="stage 4c DatasetDict (save_to_disk) with train/valid splits")
    add("--teacher_hidden_path", required=True,
        help="stage 4b teacher_hidden.npy, or the directory holding it (and teacher_index.npy)")
    add("--teacher_index_path", default=None,
        help="teacher_index.npy (default: next to teacher_hidden.npy; without it, teacher rows = train rows)")
    add("--teacher_mask_path", required=True, help="stage 4a mask.pt (bool per train row: teacher correct)")
    add("--output_dir", default=None,
        help="where adapter/, merged/ and the logs go (default: ckpt/AO_<model>_<peft>-<loss_type>-kd<kd_ratio>)")
    add("--kd_ratio", type=float, default=1.0,
        help="loss = kd_ratio * align + (1 - kd_ratio) * completion CE; 1.0 = pure alignment, the paper's HA "
             "(default: %(default)s)")
    add("--loss_type", choices=LOSS_TYPES, default="cosine", help="per-layer alignment distance (default: %(default)s)")
    add("--peft", choices=list(PEFT_FAMILIES), default="KV",
        help="which linear layers get LoRA adapters, mapped to this model's module names (default: %(default)s)")
    add("--lora_r", type=int, default=8, help="LoRA rank (default: %(default)s)")
    add("--lora_alpha", type=int, default=16, help="LoRA alpha (default: %(default)s)")
    add("--lora_dropout", type=float, default=0.05, help="LoRA dropout (default: %(default)s)")
    add("--training_ratio", type=float, default=0.1,
        help="fraction of the masked-in training rows to train on (default: %(default)s)")
    add("--dataset_seed", type=int, default=42, help="seed of the training_ratio subset (default: %(default)s)")
    add("--num_train_epochs", type=float, default=3, help="(default: %(default)s)")
    add("--max_steps", type=int, default=-1, help="stop after this many optimizer steps; -1 = epochs decide (default: %(default)s)")
    add("--learning_rate", type=float, default=1e-4, help="(default: %(default)s)")
    add("--lr_scheduler_type", default="constant_with_warmup", help="(default: %(default)s)")
    add("--warmup_steps", type=int, default=100, help="(default: %(default)s)")
    add("--weight_decay", type=float, default=0.05, help="(default: %(default)s)")
    add("--per_device_train_batch_size", type=int, default=4, help="(default: %(default)s)")
    add("--per_device_eval_batch_size", type=int, default=4, help="(default: %(default)s)")
    add("--gradient_accumulation_steps", type=int, default=1, help="(default: %(default)s)")
    add("--gradient_checkpointing", type=str2bool, default=False, help="(default: %(default)s)")
    add("--max_length", type=int, default=2048,
        help="rows with more prompt+completion tokens are dropped and counted, not truncated (default: %(default)s)")
    add("--bf16", choices=("auto", "true", "false"), default="auto",
        help="bf16 weights and autocast; auto = when the GPU supports it (default: %(default)s)")
    add("--eval_steps", type=int, default=50, help="evaluate on the valid split every N steps (default: %(default)s)")
    add("--save_steps", type=int, default=50, help="checkpoint every N steps, a multiple of --eval_steps (default: %(default)s)")
    add("--save_total_limit", type=int, default=2, help="checkpoints kept besides the best (default: %(default)s)")
    add("--logging_steps", type=int, default=10, help="(default: %(default)s)")
    add("--metric_for_best_model", choices=BEST_METRICS, default="rating_rmse",
        help="eval metric that picks the checkpoint saved at the end; rating_* are the answer-only ratings "
             "(argmax over 1..5) on the valid split, loss is its completion cross-entropy (default: %(default)s)")
    add("--max_eval_samples", type=int, default=None, help="evaluate on the first N valid rows (default: all)")
    add("--report_to", choices=("none", "tensorboard", "wandb"), default="none", help="(default: %(default)s)")
    add("--seed", type=int, default=42, help="training seed (shuffling, LoRA init) (default: %(default)s)")
    add("--overwrite", action="store_true", help="replace finished outputs in --output_dir")
    return parser


def validate_args(args) -> None:
    from siren import SirenError

    if not 0.0 <= args.kd_ratio <= 1.0:
        raise SirenError(f"--kd_ratio must be in [0, 1], got {args.kd_ratio}")
    if not 0.0 < args.training_ratio <= 1.0:
        raise SirenError(f"--training_ratio must be in (0, 1], got {args.training_ratio}")
    if args.eval_steps < 1 or args.save_steps < 1 or args.save_steps % args.eval_steps:
        raise SirenError(f"--save_steps ({args.save_steps}) must be a positive multiple of --eval_steps ({args.eval_steps})")
    for name in ("lora_r", "lora_alpha", "per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps", "max_length"):
        if getattr(args, name) < 1:
            raise SirenError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise SirenError(f"--max_eval_samples must be at least 1, got {args.max_eval_samples}")


def main() -> None:
    args = build_parser().parse_args()
    validate_args(args)

    from siren.ao import model_label
    from siren.io import RunTimer, check_outputs_free

    timer = RunTimer()
    output_dir = Path(args.output_dir or
                      f"ckpt/AO_{model_label(args.model)}_{args.peft}-{args.loss_type}-kd{args.kd_ratio:g}")
    args.output_dir = str(output_dir)
    finished = [output_dir / "adapter", output_dir / "merged", output_dir / "train_log.jsonl", output_dir / "manifest.json"]
    check_outputs_free(finished, args.overwrite)  # before the heavy imports, so a refusal is instant

    # Inputs are checked with the light imports first; peft and trl load only once they pass.
    import torch
    from transformers import AutoConfig

    from siren import SirenError
    from siren.alignment import (
        RowIndexCollator,
        build_trainer_class,
        lora_target_modules,
        select_training_rows,
        tokenize_ao_split,
    )
    from siren.ao_data import load_ao_dataset
    from siren.cot import load_mask
    from siren.hidden import TeacherStates
    from siren.io import atomic_path, atomic_write_json, atomic_write_jsonl, write_manifest
    from siren.modeling import base_fingerprint
    from siren.tokenization import load_tokenizer, rating_token_ids

    if args.overwrite and (output_dir / "checkpoints").is_dir() and int(os.environ.get("RANK", "0")) == 0:
        shutil.rmtree(output_dir / "checkpoints")  # stale checkpoints would compete for "best" with new ones

    if not (Path(args.model) / "config.json").is_file():
        raise SirenError(f"--model {args.model} holds no model (no config.json)")
    model_config = AutoConfig.from_pretrained(args.model)
    tokenizer = load_tokenizer(args.model, padding_side="right")
    ratings = rating_token_ids(tokenizer)

    dataset_dict = load_ao_dataset(args.instruction_path)
    n_train_rows = len(dataset_dict["train"])
    mask = load_mask(args.teacher_mask_path, n_train_rows)
    teacher = TeacherStates(args.teacher_hidden_path, args.teacher_index_path)
    teacher.check_against(n_layers=model_config.num_hidden_layers, hidden_size=model_config.hidden_size,
                          n_dataset_rows=n_train_rows)
    selected = select_training_rows(mask, teacher, args.training_ratio, args.dataset_seed)

    train_dataset, dropped_train = tokenize_ao_split(
        dataset_dict["train"].select(selected), tokenizer, args.max_length, desc="tokenizing train", rating_ids=ratings)
    valid = dataset_dict["valid"]
    if args.max_eval_samples is not None:
        valid = valid.select(range(min(args.max_eval_samples, len(valid))))
    eval_dataset, dropped_eval = tokenize_ao_split(valid, tokenizer, args.max_length, desc="tokenizing valid",
                                                   rating_ids=ratings)
    if len(train_dataset) == 0 or len(eval_dataset) == 0:
        raise SirenError(f"no rows fit --max_length {args.max_length} (train {len(train_dataset)}, valid {len(eval_dataset)})")

    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    bf16 = (args.bf16 == "true") or (args.bf16 == "auto" and on_gpu and torch.cuda.is_bf16_supported())
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16 if bf16 else torch.float32)
    targets = lora_target_modules(model, args.peft)
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                             target_modules=targets, bias="none", task_type="CAUSAL_LM")

    metric = args.metric_for_best_model
    config = SFTConfig(
        output_dir=str(output_dir / "checkpoints"),
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=bf16,
        use_cpu=not on_gpu,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_{metric}",
        greater_is_better=metric == "rating_acc",
        logging_steps=args.logging_steps,
        report_to=[] if args.report_to == "none" else [args.report_to],
        seed=args.seed,
        max_length=None,  # rows over --max_length were dropped above; truncation would cut the answer
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,  # keeps row_index and rating_label for the collator
        dataloader_drop_last=False,
    )
    trainer_class = build_trainer_class()
    trainer = trainer_class(
        model=model,
        args=config,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=RowIndexCollator(pad_token_id=tokenizer.pad_token_id),
        peft_config=peft_config,
        teacher=teacher,
        kd_ratio=args.kd_ratio,
        loss_type=args.loss_type,
        rating_token_ids=ratings,
    )
    trainer.train()
    best_metrics = trainer.evaluate()

    if trainer.accelerator.is_main_process:
        peft_model = trainer.accelerator.unwrap_model(trainer.model)
        with atomic_path(output_dir / "adapter") as tmp:
            peft_model.save_pretrained(str(tmp))
            atomic_write_json(tmp / "base_model.json", base_fingerprint(model_config))
        merged = peft_model.merge_and_unload()
        with atomic_path(output_dir / "merged") as tmp:
            merged.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        atomic_write_jsonl(output_dir / "train_log.jsonl", trainer.state.log_history)
        counts = {
            "train_rows": n_train_rows,
            "masked_in_rows": int(mask.sum()),
            "selected_rows": len(selected),
            "trained_rows": len(train_dataset),
            "dropped_too_long_train": dropped_train,
            "eval_rows": len(eval_dataset),
            "dropped_too_long_eval": dropped_eval,
            "teacher_rows": teacher.n_rows,
            "optimizer_steps": trainer.state.global_step,
        }
        write_manifest(
            output_dir, script="train_hidden_mask.py", args=args,
            inputs=[args.model, args.instruction_path, teacher.path, args.teacher_mask_path],
            outputs=finished[:3], counts=counts, seconds=timer.seconds,
            extra={"lora_target_modules": targets, "bf16": bf16, "best_checkpoint": trainer.state.best_model_checkpoint,
                   "best_eval": best_metrics},
        )
        print(
            f"read {n_train_rows} train rows ({int(mask.sum())} masked in, {len(selected)} selected by "
            f"--training_ratio {args.training_ratio}, {dropped_train} dropped as too long) and {len(eval_dataset)} valid rows; "
            f"trained LoRA on {', '.join(targets)} for {trainer.state.global_step} steps; "
            f"best eval {metric} {best_metrics.get(f'eval_{metric}')}; wrote {output_dir}/adapter, merged, "
            f"train_log.jsonl, manifest.json in {timer.seconds:.1f}s"
        )
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(run_main(main))
