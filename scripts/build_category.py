r"""Build a category's split files from the raw Amazon Reviews 2023 review and meta files.

    python scripts/build_category.py --category Video_Games --reviews Video_Games.jsonl.gz \
        --meta meta_Video_Games.jsonl.gz --output_root data

Writes <output_root>/<category>/{train,valid,test,history}.jsonl.gz (schema: data/README.md), made
the way the published Movies files were made: each user's interactions by time, the last one the
test target, the one before it the valid target, the rest the history, and a train row for every
history interaction with --min_history earlier ones. Also writes stats.json (the dataset-table
figures Train / Valid / Test / User / Item, the rating distribution, what each filter removed) and
manifest.json; all six files appear together or not at all. Both raw files are streamed once
(.jsonl or .jsonl.gz); memory follows the interactions kept, not the file size. A bad line (rating
not a number from 1 to 5, no parent_asin, ...) or a truncated file stops the build with one line
naming the file and line, before anything is written. Repeated (user, item) reviews keep the
latest; reviews of items without a meta record are dropped and reported, and refused above
--max_missing_meta. bash scripts/get_data.sh --raw <Category> names the files to download.
"""

import argparse
import sys
from pathlib import Path

from siren import cli
from siren.cli import nonnegative_int, positive_int, run_main


def _time_bound(value: str) -> int:
    from siren.category_splits import parse_time_bound

    try:
        return parse_time_bound(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        share = float("nan")
    if not 0 <= share <= 1:  # also false for nan
        raise argparse.ArgumentTypeError(f"expected a share from 0 to 1, got {value!r}")
    return share


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_category(parser, default=None,
                     help="category name: the output folder <output_root>/<category> and the item noun of later "
                          "stages' prompts (required)")
    parser.add_argument("--reviews", required=True, help="the review file, e.g. Video_Games.jsonl.gz")
    parser.add_argument("--meta", required=True, help="the meta file, e.g. meta_Video_Games.jsonl.gz")
    # A data root like --data_root (it holds <category>/), as for scripts/slice_data.py: hence _root, not _dir.
    parser.add_argument("--output_root", "--out_root", dest="output_root", default="data",
                        help="data root: writes <output_root>/<category>/")
    parser.add_argument("--k_core", type=positive_int, default=5,
                        help="users with fewer interactions are dropped (at least 3: history, valid and test)")
    parser.add_argument("--item_k_core", type=nonnegative_int, default=0,
                        help="items with fewer interactions are dropped, repeated with --k_core until stable; "
                             "0: no item filter (the Movies files have items seen once)")
    parser.add_argument("--min_history", type=nonnegative_int, default=3,
                        help="a history interaction becomes a train row when the user has this many earlier ones")
    parser.add_argument("--max_users", type=positive_int, default=None,
                        help="keep a random sample of this many users (drawn with --seed after the k-core); "
                             "unset: every user")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --max_users sample")
    parser.add_argument("--since", type=_time_bound, default=None,
                        help="only reviews from this time on: epoch ms or an ISO date (UTC), e.g. 2015-01-01; "
                             "unset: from the first")
    parser.add_argument("--until", type=_time_bound, default=None,
                        help="only reviews before this time (epoch ms or ISO date, UTC); unset: to the last")
    parser.add_argument("--max_missing_meta", type=_share, default=0.05,
                        help="largest share of reviews whose item has no meta record (or no title) that is "
                             "dropped with a warning; above it the build is refused")
    cli.add_overwrite(parser, help="replace the files of an existing build of this category (other files stay)")
    args = parser.parse_args(argv)
    if not args.category:
        parser.error("--category is required")
    return args


def validate(args: argparse.Namespace) -> dict:
    """The settings and the output folder (clear of the raw files), before hours of reading."""
    from siren.category_splits import SPLIT_FILES, STATS_NAME, BuildSettings
    from siren.outputs import StageOutputs

    settings = BuildSettings(
        k_core=args.k_core, item_k_core=args.item_k_core, min_history=args.min_history, max_users=args.max_users,
        seed=args.seed, since=args.since, until=args.until, max_missing_meta=args.max_missing_meta,
    )
    settings.check()
    outputs = StageOutputs(Path(args.output_root) / args.category, [*SPLIT_FILES, STATS_NAME],
                           script="scripts/build_category.py", inputs=[args.reviews, args.meta],
                           overwrite=args.overwrite, flag="--output_root").check()
    return {"settings": settings, "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checked = validate(args)

    from siren.category_splits import STATS_NAME, describe_counts, plan_build, stats_record, write_splits
    from siren.io import RunTimer, atomic_write_json
    from siren.prompts import item_noun

    timer = RunTimer()
    settings, outputs = checked["settings"], checked["outputs"]

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with outputs.claimed():
        plan = plan_build(args.reviews, args.meta, settings, progress=progress)
        with outputs.commit(args, timer) as staged:
            writing = RunTimer()
            counts = write_splits(staged.dir, plan.reviews, plan.texts, settings.min_history)
            stats = stats_record(args.category, counts, plan, settings)
            atomic_write_json(staged.path(STATS_NAME), stats)
            staged.record(counts={**stats["table"], **plan.report},
                          extra={"item_noun": item_noun(args.category),
                                 "phase_seconds": {**plan.seconds, "writing": writing.seconds}})

    for warning in plan.warnings(Path(args.meta)):
        print(f"warning: {warning}", file=sys.stderr)
    report = plan.report
    print(f"read {report['review_lines']:,} review lines ({report['reviews_outside_window']:,} outside --since/--until) "
          f"and {report['meta_lines']:,} meta lines; dropped {report['duplicate_reviews_dropped']:,} repeated reviews, "
          f"{report['reviews_missing_meta']:,} reviews without meta, {report['users_below_k_core']:,} users under "
          f"--k_core {args.k_core}, {report['users_sampled_out']:,} users not sampled")
    print(f"{args.category}: {describe_counts(counts)}; items are called \"{item_noun(args.category)}\" in prompts")
    print(f"wrote {', '.join(outputs.names)} to {outputs.folder} in {timer.seconds:.1f}s (reading the reviews "
          f"{plan.seconds['reading_reviews']:.1f}s, the meta {plan.seconds['reading_meta']:.1f}s)")


if __name__ == "__main__":
    sys.exit(run_main(main))
