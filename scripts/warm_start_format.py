r"""Format warm start: teach a model to write SIREN's response format with a reasoning built from
the prompt, before GRPO.

A real run starts GRPO from Qwen3-4B, which already writes `<think>...</think><answer>r</answer>`.
A small model (the tiny random Qwen3 of the tests, SmolLM2-135M-Instruct of `make demo-real`)
does not, so stage 4a would find no correct rows and stages 4b/5 would have nothing to align.
This script stands in for that ability: a short fine-tune (TRL SFTTrainer, CPU, loss on the
completion only) on prompt/completion pairs whose completion is a reasoning read off the prompt:

    <think>
    Recent ratings: (5) 3 3 1 2 3 (mean 2.4).
    Similar movies: (2) 3 2 (mean 2.5).
    Estimate 2.4, so 2.
    </think>
    <answer>2.0</answer><eos>

"Recent ratings" are the ratings of the history lines in the user message, after their count;
"similar" items are the history lines that share a category with the candidate, leaving out
categories that more than half of the history lines carry (for this user they say nothing:
"Movies & TV" on every line). The estimate is 0.7 * the recent mean + 0.3 * the similar items'
mean, or the recent mean alone without similar items; without rated lines it is 5 (the most
common rating). The rating is floor(estimate + 0.5) (half rounds up, unlike Python's round) clipped to
1..5, written with one decimal as the reward's ground truth is. The label is never read. Measured
on the 200-user Movies slice: the recipe's rating scores test MAE 0.90 / RMSE 1.28 (the plain mean:
0.87 / 1.26; adding the sketch's liked/disliked topics as a +-0.5 shift made it worse, 1.33), so it
is a reasoning a model can learn from its prompt, not an oracle.

Other recipes (--recipe), each measured in docs/benchmarks.md:
- "prompt": the same lists without their counts ("Recent ratings: 3 3 1 2 3 (mean 2.4)."). Greedy
  decoding by SmolLM2-135M loses count in a list of equal ratings ("3 5 5 5 5 ..." up to the token
  cap): after the same warm start, 19 of 200 test rows looped, against 4 with the count written
  first (which the prompt states: "The user's 7 most recent ratings").
- "means": the means only ("Recent ratings: mean 2.4."). Nothing to loop in (47 tokens instead of
  about 70), but the model states the mean less precisely: in a whole demo-real run its teacher was
  worse than the answer-only model before alignment.
- "mean": one line, "Recent ratings average 2.4, so 2.", for the tiny random model of `make demo`.

After training it greedy-decodes the rows (--max_new_tokens) and parses them as stage 4a does. A
warm start that leaves fewer than --min_format_rate of them well formed with a valid rating is
refused in one line and writes nothing (a learning rate of 1e-2, the tiny model's, turned
SmolLM2-135M's outputs into "<<<<"). The defaults fit a pretrained model (lr 1e-4); the tiny random
Qwen3 needs `--learning_rate 1e-2 --max_steps 60`.

    python scripts/warm_start_format.py --model ckpt/smollm2-135m-instruct \
        --data_path data/Movies/verl/max@10-long@True --output_dir ckpt/smollm2-format

Writes <output_dir>/ (model + tokenizer via save_pretrained, generations.jsonl, train_log.jsonl,
manifest.json with the format-check counts), atomically: everything goes to a temporary sibling
that is renamed into place at the end. Training flags carry the Hugging Face names
(--max_steps, --learning_rate, --per_device_train_batch_size, --max_length, --seed).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from pathlib import Path

from siren import SirenError, cli
from siren.cli import positive_int, run_main

DEFAULT_RATING = 5.0   # the estimate when the user message holds no rated history line
SIMILAR_WEIGHT = 0.3   # weight of the similar items' mean in the estimate


def round_half_up(value: float) -> int:
    """floor(value + 0.5): 4.5 -> 5, 3.5 -> 4 (Python's round would give 4 and 4)."""
    return int(math.floor(value + 0.5))


def _categories(item_text: str) -> set[str]:
    from siren.data import split_item_text

    return {part.strip() for part in split_item_text(item_text)[1].split("|") if part.strip()}


def _number(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.1f}"


RECIPES = ("counted", "prompt", "means", "mean")


def warm_start_completion(messages: list[dict], noun: str = "item", recipe: str = "counted") -> str:
    """The target response for a chat list (system + user); read off the prompt, never the label.

    recipe "counted" is the reasoning of the module docstring, "prompt" the same without the lists'
    counts, "means" without the lists; "mean" is one line, "Recent ratings average m, so r.", short enough for the tiny random
    model to learn in a minute (it cannot copy a list of ratings in that time), for `make demo`'s
    plumbing.
    """
    from siren.data import parse_history_line
    from siren.prompts import parse_user_prompt

    user = "\n".join(m["content"] for m in messages if m.get("role") == "user")
    parts = parse_user_prompt(user)
    items = [item for item in map(parse_history_line, parts.history)
             if item.rating is not None and math.isfinite(item.rating) and 1.0 <= item.rating <= 5.0]
    if not items:
        rating = round_half_up(DEFAULT_RATING)
        return (f"<think>\nNo earlier ratings; most ratings are {rating}.\n</think>\n"
                f"<answer>{float(rating):.1f}</answer>")
    ratings = [item.rating for item in items]
    mean = sum(ratings) / len(ratings)
    if recipe == "mean":
        mean = round_half_up(mean * 10) / 10
        rating = min(5, max(1, round_half_up(mean)))
        return (f"<think>\nRecent ratings average {mean:.1f}, so {rating}.\n</think>\n"
                f"<answer>{float(rating):.1f}</answer>")

    def summary(values: list[float], value_mean: float) -> str:  # "means": no list to lose count in
        if recipe == "means":
            return f"mean {value_mean:.1f}"
        listed = f"{' '.join(_number(r) for r in values)} (mean {value_mean:.1f})"
        return f"({len(values)}) {listed}" if recipe == "counted" else listed

    lines = [f"Recent ratings: {summary(ratings, mean)}."]
    seen = Counter(category for item in items for category in _categories(item.text))
    shared = sorted(_categories(parts.candidate) - {c for c, n in seen.items() if n > len(items) / 2})
    similar = [item.rating for item in items if set(shared) & _categories(item.text)]
    estimate = mean
    if similar:
        similar_mean = sum(similar) / len(similar)
        lines.append(f"Similar {noun}s: {summary(similar, similar_mean)}.")
        estimate = (1 - SIMILAR_WEIGHT) * mean + SIMILAR_WEIGHT * similar_mean
    else:
        lines.append(f"No similar {noun}s.")
    estimate = round_half_up(estimate * 10) / 10  # the rating follows from the estimate as written
    lines.append(f"Estimate {estimate:.1f}, so {min(5, max(1, round_half_up(estimate)))}.")
    rating = min(5, max(1, round_half_up(estimate)))
    return "<think>\n" + "\n".join(lines) + f"\n</think>\n<answer>{float(rating):.1f}</answer>"


def completion_loss_trainer(sft_trainer_cls):
    """An SFTTrainer whose loss applies the LM head only at completion positions.

    TRL's own loss projects every position (prompt included) onto the 151,936-token vocabulary,
    which on CPU costs minutes per step even for the tiny model; the prompt positions carry no loss
    (labels -100 under completion_only_loss), so skipping them gives the same loss far faster.
    The decoder and head are called on the unwrapped model, past the autocast that accelerate
    wraps around `model.forward`, so `--bf16` enters `accelerator.autocast()` here itself.
    """
    import torch

    class CompletionLossTrainer(sft_trainer_cls):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            unwrapped = self.accelerator.unwrap_model(model)
            targets = inputs["labels"][:, 1:]
            keep = targets != -100
            with self.accelerator.autocast():
                hidden = unwrapped.get_decoder()(
                    input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), use_cache=False,
                ).last_hidden_state
                logits = unwrapped.get_output_embeddings()(hidden[:, :-1][keep])
            logits = logits.float()
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
    cli.add_limit(parser, help="train on N rows spread evenly over the split (every k-th row, the first one "
                                "first), so that many users are seen; unset: every row")
    parser.set_defaults(limit=64)
    cli.add_output_dir(parser, "folder of the fine-tuned model (created atomically)", required=True)
    parser.add_argument("--max_steps", type=positive_int, default=60, help="optimizer steps")
    parser.add_argument("--learning_rate", type=float, default=1e-4,
                        help="AdamW peak learning rate (the tiny random Qwen3 needs 1e-2)")
    parser.add_argument("--per_device_train_batch_size", "--batch_size", dest="per_device_train_batch_size",
                        type=positive_int, default=8, help="rows per optimizer step")
    parser.add_argument("--max_length", type=positive_int, default=512,
                        help="rows whose prompt + completion exceed this many tokens are left out of training "
                             "(still measured)")
    parser.add_argument("--recipe", choices=RECIPES, default="counted",
                        help="counted: the reasoning read off the prompt, its ratings listed after their count (see "
                             "above); prompt: the lists without their counts; means: the means only; mean: one line "
                             "with the recent ratings' mean, for the tiny random model")
    parser.add_argument("--max_new_tokens", type=positive_int, default=96, help="greedy decoding length for the format check")
    parser.add_argument("--min_format_rate", type=float, default=0.9,
                        help="refuse (write nothing) when fewer of the checked rows are well formed with a valid rating")
    parser.add_argument("--check_limit", type=positive_int, default=None,
                        help="format-check only the first N rows (unset: every row of --limit)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--bf16", action="store_true",
                        help="train and run the format check under bfloat16 autocast (float32 weights and "
                             "optimizer state); faster on a CPU with bf16 instructions and on GPUs")
    cli.add_overwrite(parser, help="replace an existing --output_dir")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    if not args.learning_rate > 0 or not math.isfinite(args.learning_rate):
        raise SirenError(f"--learning_rate must be a positive number, got {args.learning_rate}")
    if not 0.0 <= args.min_format_rate <= 1.0:
        raise SirenError(f"--min_format_rate must be in [0, 1], got {args.min_format_rate}")
    if not Path(args.data_path).is_dir():
        raise SirenError(f"--data_path is not a directory: {args.data_path} (run preprocess_grpo.py first)")
    if not (Path(args.model) / "config.json").is_file():
        raise SirenError(f"--model {args.model} holds no model (no config.json)")


def spread_rows(rows: list[dict], n: int | None) -> list[dict]:
    """`n` rows spread evenly over `rows` (positions floor(i * len / n)): the split files hold each
    user's rows together, so the first n rows would be a handful of users."""
    if n is None or n >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // n] for i in range(n)]


def training_pairs(rows: list[dict], tokenizer, max_length: int, recipe: str = "counted"):
    """(Dataset of the rows that fit max_length, every row's prompt text, every row's completion, rows left out)."""
    from datasets import Dataset

    from siren.prompts import chat_prompt_text

    if tokenizer.eos_token is None:
        raise SirenError(f"the tokenizer in {tokenizer.name_or_path} has no eos token")
    from siren.prompts import item_noun
    from siren.verl_data import category_of

    noun = item_noun(category_of(rows))
    prompts = [chat_prompt_text(tokenizer, row["prompt"]) for row in rows]
    completions = [warm_start_completion(row["prompt"], noun, recipe) + tokenizer.eos_token for row in rows]
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

    from siren import decode_attention

    torch.manual_seed(args.seed)
    # The format check decodes with this model: grouped-query decoding without copying the KV cache.
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                 attn_implementation=decode_attention.register())
    with tempfile.TemporaryDirectory(prefix="warm_start_") as scratch:
        config = SFTConfig(
            output_dir=scratch,
            use_cpu=True,
            bf16=args.bf16,
            report_to="none",
            seed=args.seed,
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=min(5, args.max_steps // 10),
            per_device_train_batch_size=args.per_device_train_batch_size,
            gradient_accumulation_steps=1,
            # TRL turns it on by default; a 135M model fits without it, and recomputing the
            # activations costs a third more compute per step on a CPU.
            gradient_checkpointing=False,
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
    trainer.model.config.use_cache = True
    return trainer


def format_check(model, tokenizer, rows: list[dict], prompts: list[str], completions: list[str],
                 max_new_tokens: int) -> tuple[list[dict], dict]:
    """Greedy decoding of the prompts, parsed as stage 4a parses responses: (generations, counts)."""
    from siren.answer import parse_response
    from siren.cot_generation import HFGenerator, SamplingSettings

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

    from siren.io import RunTimer, atomic_write_jsonl
    from siren.outputs import StageOutputs
    from siren.tokenization import load_tokenizer, save_tokenizer
    from siren.verl_data import load_split_rows, parquet_path

    timer = RunTimer()
    out_dir = Path(args.output_dir)
    outputs = StageOutputs(out_dir, None, script="scripts/warm_start_format.py", overwrite=args.overwrite,
                           inputs=[args.model, parquet_path(args.data_path, args.split)]).check()
    rows = spread_rows(load_split_rows(args.data_path, args.split), args.limit)
    tokenizer = load_tokenizer(args.model)
    dataset, prompts, completions, too_long = training_pairs(rows, tokenizer, args.max_length, args.recipe)
    trainer = train_format(args, dataset, tokenizer)
    n_check = min(len(rows), args.check_limit or len(rows))
    with trainer.accelerator.autocast():  # --bf16: the check decodes as the model trained (and as 4a runs it)
        generations, check = format_check(trainer.model, tokenizer, rows[:n_check], prompts[:n_check],
                                          completions[:n_check], args.max_new_tokens)
    if check["format_ok_and_valid_fraction"] < args.min_format_rate:
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        loss = f"; loss {_fmt(losses[0])} -> {_fmt(losses[-1])}" if losses else ""
        raise SirenError(
            f"the warm start left {check['format_ok_and_valid']} of {check['rows']} rows well formed with a valid "
            f"rating ({check['format_ok_and_valid_fraction']:.0%} < --min_format_rate {args.min_format_rate:g}{loss}); "
            f"nothing written: lower --learning_rate ({args.learning_rate:g}) or change --max_steps ({args.max_steps})")
    log_history = list(trainer.state.log_history)
    losses = [entry["loss"] for entry in log_history if "loss" in entry]
    counts = {"train_rows": len(dataset), "rows_too_long": too_long, "steps": int(trainer.state.global_step),
              "first_loss": losses[0] if losses else None, "final_loss": losses[-1] if losses else None, **check}

    with outputs.claimed(), outputs.commit(args, timer) as staged:
        trainer.model.save_pretrained(staged.dir)
        save_tokenizer(tokenizer, staged.dir)
        atomic_write_jsonl(staged.dir / "generations.jsonl", generations)
        atomic_write_jsonl(staged.dir / "train_log.jsonl", log_history)
        staged.record(counts=counts)

    n = counts["rows"]
    print(f"read {len(rows)} {args.split} rows from {args.data_path}; trained {counts['steps']} steps on "
          f"{len(dataset)} of them (loss {_fmt(counts['first_loss'])} -> {_fmt(counts['final_loss'])}; {too_long} rows "
          f"over {args.max_length} tokens left out)")
    print(f"greedy format check on {n} of them: format_ok {counts['format_ok']}/{n} ({counts['format_ok_fraction']:.0%}), valid "
          f"{counts['valid']}/{n} ({counts['valid_fraction']:.0%}), both {counts['format_ok_and_valid']}/{n}, "
          f"exactly correct {counts['correct']}/{n}")
    print(f"wrote {out_dir} (model, tokenizer, generations.jsonl, train_log.jsonl, manifest.json) in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
