r"""Stage 2: turn a category's split files into the verl GRPO parquet files (+ prompt-token report).

    python preprocess_grpo.py --category Movies --max_history 10 --use_long_history True \
        --sketch_path data/Movies/sketch/minilm-K20-mean@4/user_feature.jsonl --tokenizer ckpt/tiny-qwen3

Reads train/valid/test.jsonl.gz of the category and stage 1's user_feature.jsonl; writes
train.parquet, val.parquet, test.parquet (schema: data/README.md) and manifest.json to
data/{category}/verl/max@{N}-long@{True|False}/. With --tokenizer it also writes prompt_stats.json
(prompt tokens per split for the prompt as built and for the recent-only, sketch+recent and
raw-history variants) and prompt_tokens_test.npz (per-row counts of the test split).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from siren.cli import run_main, str2bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="Movies", help="dataset category directory name (default: %(default)s)")
    parser.add_argument("--data_root", default=None,
                        help="folder holding <category>/; default: $SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data")
    parser.add_argument("--max_history", type=int, default=10,
                        help="most recent history lines put in the prompt (default: %(default)s)")
    parser.add_argument("--use_long_history", type=str2bool, default=True,
                        help="put the long-term interest sketch in the prompt: true/false (default: %(default)s)")
    parser.add_argument("--sketch_path", default=None,
                        help="stage 1's user_feature.jsonl; required with --use_long_history true (no default: the "
                             "user_feature.jsonl shipped beside the authors' data is their own sketch, not ours)")
    parser.add_argument("--out_dir", default=None,
                        help="output folder (default: data/{category}/verl/max@{N}-long@{True|False})")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer folder for prompt_stats.json, e.g. ckpt/tiny-qwen3 (default: no token report)")
    parser.add_argument("--max_prompt_tokens", type=int, default=2048,
                        help="prompts longer than this are counted in the report (default: %(default)s; "
                             "the launcher's max prompt length)")
    parser.add_argument("--limit", type=int, default=None, help="keep only the first LIMIT rows of each split (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace finished outputs in --out_dir")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace):
    from siren import SirenError
    from siren.data import resolve_category_dir, split_path

    if args.max_history < 0:
        raise SirenError(f"--max_history must be >= 0, got {args.max_history}")
    if args.limit is not None and args.limit < 1:
        raise SirenError(f"--limit must be >= 1, got {args.limit}")
    if args.max_prompt_tokens < 1:
        raise SirenError(f"--max_prompt_tokens must be >= 1, got {args.max_prompt_tokens}")
    if args.use_long_history and args.sketch_path is None:
        # The output folder would say long@True while no prompt carries a sketch.
        raise SirenError("--use_long_history true needs --sketch_path (stage 1's user_feature.jsonl); "
                         "give --use_long_history false for prompts without a sketch")
    given_dir = Path(args.data_root) / args.category if args.data_root else None
    # An existing category folder is used as is, so a missing split file is named rather than the folder skipped.
    category_dir = given_dir if given_dir is not None and given_dir.is_dir() else resolve_category_dir(args.category, args.data_root)
    for split in ("train", "valid", "test"):
        path = split_path(category_dir, split)
        if not path.is_file():
            raise SirenError(f"missing split file: {path}")
    if args.sketch_path is not None and not Path(args.sketch_path).is_file():
        raise SirenError(f"--sketch_path does not exist: {args.sketch_path}")
    if args.tokenizer is not None and not Path(args.tokenizer).exists():
        raise SirenError(f"--tokenizer does not exist: {args.tokenizer}")
    return category_dir


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    category_dir = validate(args)

    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from siren.data import load_split, split_path
    from siren.io import RunTimer, atomic_path, atomic_write_json, check_outputs_free, write_manifest
    from siren.verl_data import (
        PARQUET_SPLITS,
        PROMPT_VARIANTS,
        PromptTokenCounter,
        build_split_rows,
        default_verl_dir,
        load_counting_tokenizer,
        load_sketches,
        parquet_path,
        token_summary,
        variant_messages,
    )

    timer = RunTimer()
    out_dir = Path(args.out_dir) if args.out_dir else default_verl_dir(args.category, args.max_history, args.use_long_history)
    parquet_files = [parquet_path(out_dir, split) for split in PARQUET_SPLITS]
    stats_file, test_counts_file = out_dir / "prompt_stats.json", out_dir / "prompt_tokens_test.npz"
    outputs = parquet_files + ([stats_file, test_counts_file] if args.tokenizer else [])
    check_outputs_free(outputs, args.overwrite)

    sketch_path = Path(args.sketch_path) if args.sketch_path else None
    sketches: dict[str, str] = {}
    if sketch_path is not None:
        sketches = load_sketches(sketch_path)
        print(f"read {len(sketches)} user sketches from {sketch_path}")
    else:
        print("no --sketch_path given (--use_long_history false): prompts carry no sketch")

    records_by_split = {}
    for split in PARQUET_SPLITS:
        records = load_split(split_path(category_dir, split))
        records_by_split[split] = records[: args.limit] if args.limit else records

    data_users = {r["user_id"] for records in records_by_split.values() for r in records}
    users_with_sketch = {u for u, text in sketches.items() if text}
    overlap = len(data_users & set(sketches))
    if sketches and overlap < len(data_users):
        print(f"warning: the sketch file covers {overlap} of the {len(data_users)} users in the data "
              f"({len(sketches)} users in the sketch file); the others get no sketch", file=sys.stderr)

    rows_by_split = {}
    rows_without_sketch = {}
    for split, stem in PARQUET_SPLITS.items():
        records = records_by_split[split]
        rows_by_split[stem] = build_split_rows(
            records, category=args.category, split=stem, sketches=sketches,
            max_history=args.max_history, use_long_history=args.use_long_history,
        )
        rows_without_sketch[stem] = sum(r["user_id"] not in users_with_sketch for r in records)

    token_stats = None
    rows_over_limit: dict[str, int] | None = None
    if args.tokenizer:
        tokenizer = load_counting_tokenizer(args.tokenizer)
        counter = PromptTokenCounter(tokenizer)
        token_stats, test_counts, rows_over_limit = {}, {}, {}
        messages_by_split = {
            stem: variant_messages(rows_by_split[stem], records_by_split[split], category=args.category,
                                   sketches=sketches, max_history=args.max_history)
            for split, stem in PARQUET_SPLITS.items()
        }
        progress = tqdm(total=len(PARQUET_SPLITS) * len(PROMPT_VARIANTS), desc="prompt tokens", unit="variant")
        for stem, by_variant in messages_by_split.items():
            counted: dict[str, np.ndarray] = {}
            for variant in sorted(PROMPT_VARIANTS, key=lambda v: v != "as_built"):  # as_built first
                prompts = by_variant[variant]
                if variant != "as_built" and prompts == by_variant["as_built"]:
                    counted[variant] = counted["as_built"]  # e.g. sketch_recent when the sketch is in the prompt
                else:
                    counter.verify(prompts)
                    counted[variant] = counter.count(prompts)
                progress.update()
            token_stats[stem] = {variant: token_summary(counts) for variant, counts in counted.items()}
            rows_over_limit[stem] = int((counted["as_built"] > args.max_prompt_tokens).sum())
            if stem == "test":
                test_counts = counted
        progress.close()
        if counter.whole_text:
            print("note: chunked token counting disagreed with this tokenizer; counted whole prompts instead",
                  file=sys.stderr)

    for stem, path in zip(PARQUET_SPLITS.values(), parquet_files, strict=True):
        with atomic_path(path) as tmp:
            pd.DataFrame(rows_by_split[stem]).to_parquet(tmp, index=False)
    if token_stats is not None:
        atomic_write_json(stats_file, {
            "tokenizer": str(args.tokenizer),
            "max_history": args.max_history,
            "use_long_history": bool(args.use_long_history),
            "splits": token_stats,
            "counts": {"rows_without_sketch": rows_without_sketch, "rows_over_max_prompt_tokens": rows_over_limit},
        })
        with atomic_path(test_counts_file) as tmp:
            with open(tmp, "wb") as handle:  # np.savez on a bare path would append ".npz"
                np.savez(handle, **test_counts)

    row_counts = {stem: len(rows) for stem, rows in rows_by_split.items()}
    counts = {
        "rows": row_counts,
        "rows_without_sketch": rows_without_sketch,
        "rows_over_max_prompt_tokens": rows_over_limit,
        "data_users": len(data_users),
        "sketch_users": len(sketches),
        "sketch_users_in_data": overlap,
        "token_counting": None if token_stats is None else ("whole_text" if counter.whole_text else "chunked"),
    }
    inputs = [split_path(category_dir, split) for split in PARQUET_SPLITS] + ([sketch_path] if sketch_path else [])
    write_manifest(out_dir, script="preprocess_grpo.py", args=args, inputs=inputs, outputs=outputs,
                   counts=counts, seconds=timer.seconds)

    print(f"read {category_dir}: " + ", ".join(f"{split} {len(r)} rows" for split, r in records_by_split.items()))
    print(f"wrote {out_dir}/{{train,val,test}}.parquet (" + ", ".join(f"{k} {v}" for k, v in row_counts.items())
          + f"), sketch in prompt: {bool(args.use_long_history and sketches)}")
    print("rows without a sketch: " + ", ".join(f"{k} {v}" for k, v in rows_without_sketch.items()))
    if token_stats is not None:
        print(f"rows over {args.max_prompt_tokens} prompt tokens: "
              + ", ".join(f"{k} {v}" for k, v in rows_over_limit.items()))
        if any(rows_over_limit.values()):
            print(f"warning: {sum(rows_over_limit.values())} prompts are longer than --max_prompt_tokens "
                  f"{args.max_prompt_tokens}; training drops them", file=sys.stderr)
        test = token_stats["test"]
        print("test prompt tokens (mean): " + ", ".join(f"{v} {test[v]['mean']}" for v in PROMPT_VARIANTS))
        print(f"wrote {stats_file} and {test_counts_file}")
    else:
        print("no --tokenizer: prompt-token report skipped")
    print(f"done in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
