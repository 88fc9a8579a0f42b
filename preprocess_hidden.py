"""Stage 4c: the answer-only prompt/completion DatasetDict (train, valid, test) for stages 5 and 6.

    python preprocess_hidden.py --data_path data/Movies/verl/max@10-long@True --tokenizer ckpt/GRPO_Movies_step100

Each prompt is the chat-templated parquet prompt + an empty think block + `<answer>`; each
completion is what the GRPO teacher writes after `<answer>`, e.g. "4.0</answer>". Writes a
`datasets` DatasetDict (save_to_disk) with manifest.json to data/{category}/hidden/max@{N}-long@{bool},
the folder named after the parquet directory, unless --out_dir says otherwise. Takes seconds; no model weights are loaded.
"""

import argparse
import sys

from siren.cli import run_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", required=True, help="verl parquet directory (max@N-long@bool) with train/val/test.parquet")
    parser.add_argument("--tokenizer", required=True, help="model directory whose tokenizer and chat template build the prompts")
    parser.add_argument("--out_dir", default=None, help="output directory (default: data/{category}/hidden/<parquet dir name>)")
    parser.add_argument("--category", default=None, help="category for the default --out_dir (default: from the rows' data_source)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows of each split (default: all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out_dir")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from pathlib import Path

    from datasets import Dataset, DatasetDict

    from siren import SirenError
    from siren.ao_data import answer_only_records, default_hidden_dir
    from siren.io import RunTimer, atomic_path, check_outputs_free, write_manifest
    from siren.modeling import tokenizer_record
    from siren.tokenization import count_tokens, load_tokenizer
    from siren.verl_data import PARQUET_SPLITS, category_of, load_split_rows, parquet_path

    timer = RunTimer()
    if args.limit is not None and args.limit < 1:
        raise SirenError(f"--limit must be at least 1, got {args.limit}")
    rows = {name: load_split_rows(args.data_path, stem, args.limit) for name, stem in PARQUET_SPLITS.items()}
    category = category_of([r for split_rows in rows.values() for r in split_rows], args.category)
    out_dir = Path(args.out_dir) if args.out_dir else default_hidden_dir(args.data_path, category)
    check_outputs_free([out_dir], args.overwrite)
    tokenizer = load_tokenizer(args.tokenizer)

    columns = {name: answer_only_records(tokenizer, split_rows) for name, split_rows in rows.items()}
    dataset = DatasetDict({name: Dataset.from_dict(cols) for name, cols in columns.items()})
    prompt_tokens = {name: count_tokens(tokenizer, cols["prompt"]) for name, cols in columns.items()}
    counts = {name: len(cols["prompt"]) for name, cols in columns.items()}
    token_stats = {
        name: {"mean": round(sum(t) / len(t), 1), "max": max(t)} for name, t in prompt_tokens.items()
    }
    inputs = [parquet_path(args.data_path, stem) for stem in PARQUET_SPLITS.values()]
    with atomic_path(out_dir) as tmp:
        dataset.save_to_disk(str(tmp))
        write_manifest(tmp, script="preprocess_hidden.py", args=args, inputs=inputs, outputs=[out_dir],
                       counts=counts, seconds=timer.seconds,
                       extra={"category": category, "tokenizer": tokenizer_record(tokenizer, args.tokenizer),
                              "prompt_tokens": token_stats})
    print(f"read {', '.join(f'{n} {name}' for name, n in counts.items())} rows from {args.data_path}")
    print(f"wrote the answer-only DatasetDict to {out_dir} (prompt tokens, mean: "
          + ", ".join(f"{name} {s['mean']}" for name, s in token_stats.items()) + f") in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
