r"""Format warm start for the CPU demo: teach a tiny random model to write SIREN's response format.

A real run starts GRPO from Qwen3-4B, which already writes `<think>...</think><answer>r</answer>`.
The demo's tiny random Qwen3 never does, so stage 4a would find no correct rows and stages 4b/5
would have nothing to align. This script stands in for the pretrained model's formatting ability:
a short full fine-tune (TRL SFTTrainer, CPU) on prompt/completion pairs whose completion is

    <think>
    The user's recent ratings average {m:.1f}.
    </think>
    <answer>{r}</answer><|im_end|>

where m is the mean rating of the history lines in the row's user message (lines whose last
comma-separated field is not a number in 1-5 are skipped; no rated line gives m = 5) and
r = floor(m + 0.5) clipped to 1..5 (half rounds up, unlike Python's round). The label is never
read: the warm start does not see the answers. The loss is on the completion only.
Rows whose prompt + completion exceed --max_length tokens are left out of training.
With the defaults (64 rows, 60 steps at lr 1e-2) the tiny Qwen3 writes the format for every row
under greedy decoding, in under a minute on 2 CPU cores.

After training it greedy-decodes the same rows (--max_new_tokens, default 32) and reports
the fraction of well-formed (`siren.answer.parse_response(...).format_ok`) and valid responses.

    python scripts/warm_start_format.py --model ckpt/tiny-qwen3 \
        --data_path data/Movies/verl/max@10-long@False --output_dir ckpt/tiny-qwen3-format

Writes <output_dir>/ (model + tokenizer via save_pretrained, generations.jsonl, train_log.jsonl,
manifest.json with the format-check counts), atomically: everything goes to a temporary sibling
that is renamed into place at the end. Training flags carry the Hugging Face names
(--max_steps, --learning_rate, --per_device_train_batch_size, --max_length, --seed).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from siren import SirenError, cli
from siren.cli import positive_int, run_main

DEFAULT_RATING = 5.0  # m when the user message holds no rated history line


def history_ratings(user_message: str) -> list[float]:
    """Ratings (1-5) of the "Title, categories, rating" lines of a user message, in order."""
    from siren.data import history_lines, parse_history_line

    ratings = []
    for line in history_lines(user_message):
        rating = parse_history_line(line).rating
        if rating is not None and math.isfinite(rating) and 1.0 <= rating <= 5.0:
            ratings.append(rating)
    return ratings


def round_half_up(value: float) -> int:
    """floor(value + 0.5): 4.5 -> 5, 3.5 -> 4 (Python's round would give 4 and 4)."""
    return int(math.floor(value + 0.5))


def warm_start_completion(messages: list[dict]) -> str:
    """The target response for a chat list (system + user); built from the history, not the label."""
    user = "\n".join(m["content"] for m in messages if m.get("role") == "user")
    ratings = history_ratings(user)
    mean = sum(ratings) / len(ratings) if ratings else DEFAULT_RATING
    rating = min(5, max(1, round_half_up(mean)))
    return f"<think>\nThe user's recent ratings average {mean:.1f}.\n</think>\n<answer>{rating}</answer>"


def completion_loss_trainer(sft_trainer_cls):
    """An SFTTrainer whose loss applies the LM head only at completion positions.

    TRL's own loss projects every position (prompt included) onto the 151,936-token vocabulary,
    which on CPU costs minutes per step even for the tiny model; the prompt positions carry no loss
    (labels -100 under completion_only_loss), so skipping them gives the same loss far faster.
    """
    import torch

    class CompletionLossTrainer(sft_trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            unwrapped = self.accelerator.unwrap_model(model)
            hidden = unwrapped.get_decoder()(
                input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False,
            ).last_hidden_state
            targets = inputs["labels"][:, 1:]
            keep = targets != -100
            logits = unwrapped.get_output_embeddings()(hidden[:, :-1][keep]).float()
            total = torch.nn.functional.cross_entropy(logits, targets[keep], reduction="sum")
            loss = total / keep.sum().clamp(min=1)
            return (loss, {"logits": logits}) if return_outputs else loss

    return CompletionLossTrainer


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_model(parser, "model + tokenizer folder to fine-tune", required=False, default="ckpt/tiny-qwen3")
    cli.add_data_path(parser, "verl parquet folder written by preprocess_grpo.py")
    cli.add_split(parser, default="train", help="parquet split to train and measure on: train, valid (or val) or test")
    cli.add_limit(parser, help="use the first N rows of the split")
    parser.set_defaults(limit=64)
    cli.add_output_dir(parser, "folder of the fine-tuned model (created atomically)", required=True)
    parser.add_argument("--max_steps", type=positive_int, default=60, help="optimizer steps")
    parser.add_argument("--learning_rate", type=float, default=1e-2, help="AdamW peak learning rate")
    parser.add_argument("--per_device_train_batch_size", "--batch_size", dest="per_device_train_batch_size",
                        type=positive_int, default=8, help="rows per optimizer step")
    parser.add_argument("--max_length", type=positive_int, default=512,
                        help="rows whose prompt + completion exceed this many tokens are left out of training "
                             "(still measured)")
    parser.add_argument("--max_new_tokens", type=positive_int, default=32, help="greedy decoding length for the format check")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    cli.add_overwrite(parser, help="replace an existing --output_dir")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    if not args.learning_rate > 0:
        raise SirenError(f"--learning_rate must be positive, got {args.learning_rate}")
    if not Path(args.data_path).is_dir():
        raise SirenError(f"--data_path is not a directory: {args.data_path} (run preprocess_grpo.py first)")
    if not (Path(args.model) / "config.json").is_file():
        raise SirenError(f"--model {args.model} holds no model (no config.json)")


def training_pairs(rows: list[dict], tokenizer, max_length: int):
    """(Dataset of the rows that fit max_length, every row's prompt text, every row's completion, rows left out)."""
    from datasets import Dataset

    from siren.prompts import chat_prompt_text

    if tokenizer.eos_token is None:
        raise SirenError(f"the tokenizer in {tokenizer.name_or_path} has no eos token")
    prompts = [chat_prompt_text(tokenizer, row["prompt"]) for row in rows]
    completions = [warm_start_completion(row["prompt"]) + tokenizer.eos_token for row in rows]
    lengths = [len(ids) for ids in tokenizer([p + c for p, c in zip(prompts, completions)], add_special_tokens=False)["input_ids"]]
    fits = [n <= max_length for n in lengths]
    if not any(fits):
        raise SirenError(f"every row is longer than --max_length {max_length} tokens (shortest: {min(lengths)})")
    dataset = Dataset.from_dict({"prompt": [p for p, ok in zip(prompts, fits) if ok],
                                 "completion": [c for c, ok in zip(completions, fits) if ok]})
    return dataset, prompts, completions, fits.count(False)


def train_format(args: argparse.Namespace, dataset, tokenizer):
    """A short full fine-tune (SFT, completion-only loss, CPU); returns the trainer."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="warm_start_") as scratch:
        config = SFTConfig(
            output_dir=scratch,
            use_cpu=True,
            report_to="none",
            seed=args.seed,
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=min(5, args.max_steps // 10),
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=1,
            max_length=args.max_length,
            completion_only_loss=True,
            packing=False,
            save_strategy="no",
            logging_steps=max(1, min(10, args.max_steps // 6)),
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataset_num_proc=None,
        )
        trainer = completion_loss_trainer(SFTTrainer)(
            model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        trainer.train()
    trainer.model.eval()
    return trainer


def format_check(model, tokenizer, rows: list[dict], prompts: list[str], completions: list[str],
                 max_new_tokens: int) -> tuple[list[dict], dict]:
    """Greedy decoding of the prompts, parsed as stage 4a parses responses: (generations, counts)."""
    from siren.answer import parse_response
    from siren.generation import HFGenerator, SamplingSettings

    tokenizer.padding_side = "left"
    generator = HFGenerator(model, tokenizer, SamplingSettings(max_new_tokens=max_new_tokens, temperature=0.0))
    generations = []
    for start in range(0, len(prompts), 16):
        for offset, (text, n_tokens) in enumerate(generator.generate(prompts[start:start + 16])):
            row = rows[start + offset]
            parsed = parse_response(text)
            generations.append({
                "index": int(row["extra_info"]["index"]), "response": text, "target": completions[start + offset],
                "format_ok": parsed.format_ok, "valid": parsed.valid, "prediction": parsed.rating,
                "label": row["label"], "generated_tokens": n_tokens,
            })
    n = len(generations)
    n_format = sum(g["format_ok"] for g in generations)
    n_valid = sum(g["valid"] for g in generations)
    n_both = sum(g["format_ok"] and g["valid"] for g in generations)
    counts = {
        "rows": n, "format_ok": n_format, "valid": n_valid, "format_ok_and_valid": n_both,
        "correct": sum(g["format_ok"] and g["prediction"] == g["label"] for g in generations),
        "format_ok_fraction": round(n_format / n, 4), "valid_fraction": round(n_valid / n, 4),
        "format_ok_and_valid_fraction": round(n_both / n, 4),
    }
    return generations, counts


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    validate(args)

    from siren.io import RunTimer, atomic_path, atomic_write_jsonl, check_outputs_free, write_manifest
    from siren.tokenization import load_tokenizer
    from siren.verl_data import load_split_rows, parquet_path

    timer = RunTimer()
    out_dir = Path(args.output_dir)
    check_outputs_free([out_dir], args.overwrite)
    rows = load_split_rows(args.data_path, args.split, args.limit)
    tokenizer = load_tokenizer(args.model)
    dataset, prompts, completions, too_long = training_pairs(rows, tokenizer, args.max_length)
    trainer = train_format(args, dataset, tokenizer)
    generations, check = format_check(trainer.model, tokenizer, rows, prompts, completions, args.max_new_tokens)
    log_history = list(trainer.state.log_history)
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    counts = {"train_rows": len(dataset), "rows_too_long": too_long, "steps": int(trainer.state.global_step),
              "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None, **check}

    with atomic_path(out_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_jsonl(tmp / "generations.jsonl", generations)
        atomic_write_jsonl(tmp / "train_log.jsonl", log_history)
        write_manifest(tmp, script="scripts/warm_start_format.py", args=args,
                       inputs=[args.model, parquet_path(args.data_path, args.split)], outputs=[out_dir],
                       counts=counts, seconds=timer.seconds)

    n = counts["rows"]
    print(f"read {n} {args.split} rows from {args.data_path}; trained {counts['steps']} steps on {len(dataset)} of "
          f"them (loss {_fmt(counts['first_loss'])} -> {_fmt(counts['final_loss'])}; {too_long} rows over "
          f"{args.max_length} tokens left out)")
    print(f"greedy format check: format_ok {counts['format_ok']}/{n} ({counts['format_ok_fraction']:.0%}), valid "
          f"{counts['valid']}/{n} ({counts['valid_fraction']:.0%}), both {counts['format_ok_and_valid']}/{n}, "
          f"exactly correct {counts['correct']}/{n}")
    print(f"wrote {out_dir} (model, tokenizer, generations.jsonl, train_log.jsonl, manifest.json) in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
