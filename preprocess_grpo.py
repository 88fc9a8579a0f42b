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
    parser.add_argument("--train_rows_per_user", type=positive_int, default=None,
                        help="keep only each user's K most recent train rows (largest timestamp), before --limit "
                             "(unset: all; the authors keep all)")
    cli.add_limit(parser, help="keep only the first N rows of each split (unset: all)")
    cli.add_overwrite(parser)
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """Check the flags, inputs and outputs before anything is read; returns the resolved paths and
    the stage's StageOutputs."""
    from siren.data import resolve_category_dir, split_path
    from siren.io import missing_file_message
    from siren.manifest import check_input_manifest
    from siren.outputs import StageOutputs
    from siren.verl_build import STATS_NAME, TEST_COUNTS_NAME
    from siren.verl_data import PARQUET_SPLITS, default_verl_dir

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
    if args.sketch_path is not None:
        if not Path(args.sketch_path).is_file():
            raise SirenError(f"--sketch_path: {missing_file_message(args.sketch_path, 'sketch file')}")
        check_input_manifest(args.sketch_path, made_by="generate_interest_sketch.py", flag="--sketch_path",
                             expect={"category": (args.category, "--category")})
    if args.tokenizer is not None and not Path(args.tokenizer).exists():
        raise SirenError(f"--tokenizer does not exist: {args.tokenizer}")
    output_dir = Path(args.output_dir) if args.output_dir else default_verl_dir(
        args.category, args.max_history, args.use_long_history)
    names = [f"{stem}.parquet" for stem in PARQUET_SPLITS.values()]
    names += [STATS_NAME, TEST_COUNTS_NAME] if args.tokenizer is not None else []
    outputs = StageOutputs(output_dir, names, script="preprocess_grpo.py",
                           inputs=[*split_files, args.sketch_path, args.tokenizer], overwrite=args.overwrite).check()
    return {"category_dir": category_dir, "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = validate(args)

    from siren.io import RunTimer
    from siren.verl_build import STATS_NAME, build_parquets

    timer = RunTimer()
    outputs = paths["outputs"]
    out = outputs.folder
    if args.sketch_path is None:
        print("no --sketch_path given (--use_long_history false): prompts carry no sketch")

    with outputs.claimed():
        build = build_parquets(
            paths["category_dir"], category=args.category, max_history=args.max_history,
            use_long_history=args.use_long_history, sketch_path=args.sketch_path, limit=args.limit,
            train_rows_per_user=args.train_rows_per_user, tokenizer_path=args.tokenizer, max_prompt_tokens=args.max_prompt_tokens,
        )
        with outputs.commit(args, timer) as staged:
            build.write(staged.dir)
            staged.record(counts=build.counts())

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
    print(f"wrote {', '.join(outputs.names)} to {out} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
