r"""Stage 4c: the answer-only prompt/completion DatasetDict (train, valid, test) for stages 5 and 6.

    python preprocess_hidden.py --data_path data/Movies/verl/max@10-long@True --model ckpt/GRPO_Movies_step100

Each prompt is the chat-templated parquet prompt + an empty think block + `<answer>`; each
completion is what the GRPO teacher writes after `<answer>`, e.g. "4.0</answer>". Writes a
`datasets` DatasetDict (save_to_disk) and manifest.json to --output_dir (default
data/{category}/hidden/max@{N}-long@{bool}, named after the parquet folder); the manifest records
the --model folder's identity, which stages 5 and 6 compare with theirs. --overwrite replaces the
DatasetDict's own entries and the manifest, nothing else in the folder. Takes seconds; no model
weights are loaded. The authors' form, `--category Movies --max_history 10`, finds the parquet
folder stage 2 wrote (data/{category}/verl/max@{N}-long@{bool}).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from siren import SirenError, cli
from siren.cli import nonnegative_int, run_main, str2bool

# Stage 2's defaults, used to find its folder from --category alone.
STAGE2_MAX_HISTORY, STAGE2_USE_LONG_HISTORY = 10, True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_data_path(parser, "stage 2's verl parquet folder (max@N-long@bool) with train/val/test.parquet; "
                              "unset: found from --category, --max_history and --use_long_history", required=False)
    cli.add_model(parser, "model folder whose tokenizer and chat template build the prompts (no weights are read)",
                  aliases=("--tokenizer",))
    cli.add_output_dir(parser, "output folder; unset: data/{category}/hidden/<parquet folder name>")
    cli.add_category(parser, default=None, help="category: names the default --output_dir (unset: from the rows' "
                                                "data_source) and, without --data_path, the parquet folder")
    parser.add_argument("--max_history", type=nonnegative_int, default=None,
                        help=f"without --data_path: the N of data/{{category}}/verl/max@N-long@...; unset: {STAGE2_MAX_HISTORY}")
    parser.add_argument("--use_long_history", type=str2bool, default=None,
                        help=f"without --data_path: the long@ part of the parquet folder; unset: {STAGE2_USE_LONG_HISTORY}")
    cli.add_limit(parser, help="only the first N rows of each split (unset: all)")
    cli.add_overwrite(parser, help="replace this stage's DatasetDict entries and manifest.json in --output_dir")
    return parser.parse_args(argv)


def resolve_data_path(args: argparse.Namespace) -> Path:
    """--data_path, or stage 2's folder for --category/--max_history/--use_long_history."""
    from siren.verl_data import default_verl_dir, parse_verl_dir_name

    if args.data_path is None:
        if args.category is None:
            raise SirenError("give --data_path (stage 2's parquet folder) or --category (with --max_history and "
                             "--use_long_history) to find it")
        max_history = STAGE2_MAX_HISTORY if args.max_history is None else args.max_history
        long_history = STAGE2_USE_LONG_HISTORY if args.use_long_history is None else args.use_long_history
        return default_verl_dir(args.category, max_history, long_history)
    named = parse_verl_dir_name(Path(args.data_path).resolve().name)
    given = {"--max_history": args.max_history, "--use_long_history": args.use_long_history}
    for position, (flag, value) in enumerate(given.items()):
        if value is not None and named is not None and named[position] != value:
            raise SirenError(f"{flag} {value} disagrees with --data_path {args.data_path} (made with {flag} "
                             f"{named[position]}); give one or the other")
    return Path(args.data_path)


def validate(args: argparse.Namespace) -> dict:
    """The parquet folder (its name and stage 2's manifest against the flags), its rows, and the
    output folder; before the tokenizer loads."""
    from siren.answer_only_data import DATASET_DICT_ENTRIES, default_hidden_dir, read_parquet_splits
    from siren.manifest import check_input_manifest
    from siren.outputs import StageOutputs
    from siren.verl_data import category_of

    data_path = resolve_data_path(args)
    check_input_manifest(data_path, made_by="preprocess_grpo.py", flag="--data_path",
                         expect={"max_history": (args.max_history, "--max_history"),
                                 "use_long_history": (args.use_long_history, "--use_long_history"),
                                 "category": (args.category, "--category")})
    rows = read_parquet_splits(data_path, args.limit)
    category = category_of([row for split_rows in rows.values() for row in split_rows], args.category)
    out_dir = args.output_dir or default_hidden_dir(data_path, category)
    outputs = StageOutputs(out_dir, DATASET_DICT_ENTRIES, script="preprocess_hidden.py", inputs=[data_path, args.model],
                           overwrite=args.overwrite).check()
    return {"data_path": data_path, "rows": rows, "category": category, "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checked = validate(args)

    from siren.answer_only_data import build_ao_dataset
    from siren.io import RunTimer
    from siren.modeling import MANIFEST_MODEL_KEY, model_record, tokenizer_record
    from siren.tokenization import load_tokenizer

    timer = RunTimer()
    data_path, category, outputs = checked["data_path"], checked["category"], checked["outputs"]
    with outputs.claimed():
        tokenizer = load_tokenizer(args.model)
        dataset, counts, prompt_tokens = build_ao_dataset(tokenizer, checked["rows"])
        with outputs.commit({**vars(args), "data_path": str(data_path)}, timer) as staged:
            dataset.save_to_disk(str(staged.dir))
            staged.record(counts=counts, extra={"category": category, MANIFEST_MODEL_KEY: model_record(args.model),
                                                "tokenizer": tokenizer_record(tokenizer, args.model),
                                                "prompt_tokens": prompt_tokens})
    print(f"read {', '.join(f'{n} {split}' for split, n in counts.items())} rows from {data_path}")
    print(f"wrote the answer-only DatasetDict to {outputs.folder} (prompt tokens, mean: "
          + ", ".join(f"{split} {s['mean']}" for split, s in prompt_tokens.items()) + f") in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
