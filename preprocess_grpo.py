r"""Stage 2: turn a category's split files into the verl GRPO parquet files (+ prompt-token report).

    python preprocess_grpo.py --category Movies --max_history 10 --use_long_history True \
        --sketch_path data/Movies/sketch/minilm-K20-mean@4/user_feature.jsonl --tokenizer ckpt/tiny-qwen3

Reads train/valid/test.jsonl.gz of the category and stage 1's user_feature.jsonl; writes
train.parquet, val.parquet, test.parquet (schema: data/README.md) and manifest.json to --output_dir
(default data/{category}/verl/max@{N}-long@{True|False}/), all of them or none. With --tokenizer it
also writes prompt_stats.json (prompt tokens per split for the prompt as built and for the
recent-only, sketch+recent and raw-history variants) and prompt_tokens_test.npz (per-row counts of
the test split). The authors' flags (--category --data_root --max_history --use_long_history) are
accepted as written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from siren import SirenError, cli
from siren.cli import positive_int, run_main, str2bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_category(parser, help="dataset category folder name; also picks the item noun of the prompts")
    cli.add_data_root(parser)
    parser.add_argument("--max_history", type=int, default=10,
                        help="the N most recent history lines put in the prompt (N >= 1)")
    parser.add_argument("--use_long_history", type=str2bool, default=True,
                        help="put the long-term interest sketch in the prompt: true/false")
    parser.add_argument("--sketch_path", default=None,
                        help="stage 1's user_feature.jsonl; required with --use_long_history true (no default: the "
                             "user_feature.jsonl shipped beside the authors' data is their own sketch, not ours)")
    cli.add_output_dir(parser, "output folder; unset: data/{category}/verl/max@{N}-long@{True|False}")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer (or model) folder for prompt_stats.json, e.g. ckpt/tiny-qwen3; "
                             "unset: no token report")
    parser.add_argument("--max_prompt_tokens", type=positive_int, default=2048,
                        help="prompts longer than this are counted in the report (the launcher's max prompt length)")
    cli.add_limit(parser, help="keep only the first N rows of each split (unset: all)")
    cli.add_overwrite(parser)
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """Check the flags and inputs before anything is read; returns the resolved paths."""
    from siren.data import resolve_category_dir, split_path
    from siren.io import check_output_clear_of_inputs, check_output_dir, missing_file_message
    from siren.verl_data import default_verl_dir

    if args.max_history < 1:
        # max@N means the N most recent ratings; with 0 every prompt would claim the user has none.
        raise SirenError(f"--max_history must be at least 1, got {args.max_history} "
                         "(with 0 every prompt would say the user has no earlier ratings)")
    if args.use_long_history and args.sketch_path is None:
        # The output folder would say long@True while no prompt carries a sketch.
        raise SirenError("--use_long_history true needs --sketch_path (stage 1's user_feature.jsonl); "
                         "give --use_long_history false for prompts without a sketch")
    given_dir = Path(args.data_root) / args.category if args.data_root else None
    # An existing category folder is used as is, so a missing split file is named rather than the folder skipped.
    category_dir = given_dir if given_dir is not None and given_dir.is_dir() else resolve_category_dir(args.category, args.data_root)
    split_files = [split_path(category_dir, split) for split in ("train", "valid", "test")]
    for path in split_files:
        if not path.is_file():
            raise SirenError(missing_file_message(path, "split file"))
    if args.sketch_path is not None and not Path(args.sketch_path).is_file():
        raise SirenError(f"--sketch_path: {missing_file_message(args.sketch_path, 'sketch file')}")
    if args.tokenizer is not None and not Path(args.tokenizer).exists():
        raise SirenError(f"--tokenizer does not exist: {args.tokenizer}")
    output_dir = Path(args.output_dir) if args.output_dir else default_verl_dir(
        args.category, args.max_history, args.use_long_history)
    check_output_clear_of_inputs(output_dir, [*split_files, args.sketch_path, args.tokenizer])
    check_output_dir(output_dir)
    return {"category_dir": category_dir, "split_files": split_files, "output_dir": output_dir}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = validate(args)

    from siren.io import MANIFEST_NAME, RunTimer, atomic_outputs, check_outputs_free, write_manifest
    from siren.verl_data import STATS_NAME, build_parquets, output_names

    timer = RunTimer()
    out = paths["output_dir"]
    names = [*output_names(with_token_report=args.tokenizer is not None), MANIFEST_NAME]
    check_outputs_free([out / name for name in names], args.overwrite)
    if args.sketch_path is None:
        print("no --sketch_path given (--use_long_history false): prompts carry no sketch")

    build = build_parquets(
        paths["category_dir"], category=args.category, max_history=args.max_history,
        use_long_history=args.use_long_history, sketch_path=args.sketch_path, limit=args.limit,
        tokenizer_path=args.tokenizer, max_prompt_tokens=args.max_prompt_tokens,
    )
    with atomic_outputs(out, names, overwrite=args.overwrite) as staged:
        build.write(staged.dir)
        write_manifest(staged.dir, script="preprocess_grpo.py", args=args,
                       inputs=[*paths["split_files"], *([args.sketch_path] if args.sketch_path else [])],
                       outputs=[out / name for name in names[:-1]], counts=build.counts(), seconds=timer.seconds)

    for warning in build.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.tokenizer is None and (out / STATS_NAME).exists():
        print(f"warning: {out / STATS_NAME} is from an earlier run: this one wrote no token report "
              "(pass --tokenizer to replace it)", file=sys.stderr)
    over_limit = sum((build.counts()["rows_over_max_prompt_tokens"] or {}).values())
    if over_limit:
        print(f"warning: {over_limit} prompts are longer than --max_prompt_tokens {args.max_prompt_tokens}; "
              "training drops them", file=sys.stderr)
    for line in build.summary():
        print(line)
    if args.tokenizer is None:
        print("no --tokenizer: prompt-token report skipped")
    print(f"wrote {', '.join(names)} to {out} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
