r"""Classical rating baselines (constant 5.0, global mean, user+item bias, MF, PMF) with cornac.

    python scripts/baselines.py --category Movies --output_dir results/demo/baselines

Fits on train (or train+valid with --fit_on train+valid), scores MAE / RMSE / accuracy on test with
siren.metrics, and writes <output_dir>/metrics.json and manifest.json, both or neither. A test row
whose user or item is not in the fit data is predicted as the global mean; the count is reported.
About 10 s on 2 CPU cores for the full Movies split, most of it reading the files.
"""

import argparse
import sys

from siren import cli
from siren.cli import positive_int, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from siren.tools.baselines import FIT_CHOICES, METHODS

    parser = cli.stage_parser(__doc__)
    cli.add_category(parser)
    cli.add_data_root(parser)
    cli.add_output_dir(parser, "where metrics.json and manifest.json go", default="results/baselines")
    parser.add_argument("--fit_on", choices=sorted(FIT_CHOICES), default="train", help="split(s) the models are fitted on")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="baselines to run (unset: all)")
    cli.add_limit(parser, help="keep only the first N rows of each split, as preprocess_grpo.py --limit does, so the "
                               "test rows are those the LLM stages score (unset: all rows)")
    parser.add_argument("--k", type=positive_int, default=10, help="latent factors of MF and PMF")
    parser.add_argument("--max_iter", type=positive_int, default=20, help="SGD epochs of the bias model and MF")
    parser.add_argument("--pmf_max_iter", type=positive_int, default=100, help="epochs of PMF")
    parser.add_argument("--seed", type=int, default=0, help="random seed of every model")
    cli.add_overwrite(parser, help="replace an existing metrics.json (other files in the folder stay)")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """The split files and the output folder, clear of them; before anything is read."""
    from siren.data import require_file, resolve_category_dir, split_path
    from siren.outputs import StageOutputs
    from siren.tools.baselines import FIT_CHOICES

    category_dir = resolve_category_dir(args.category, args.data_root)
    fit_paths = [require_file(split_path(category_dir, split), "split file") for split in FIT_CHOICES[args.fit_on]]
    test_path = require_file(split_path(category_dir, "test"), "split file")
    outputs = StageOutputs(args.output_dir, ["metrics.json"], script="baselines.py", inputs=[*fit_paths, test_path],
                           overwrite=args.overwrite).check()
    return {"category_dir": category_dir, "fit_paths": fit_paths, "test_path": test_path, "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checked = validate(args)

    from siren.data import load_split
    from siren.io import RunTimer, atomic_write_json
    from siren.tools.baselines import ModelSettings, format_table, run_baselines

    timer = RunTimer()
    category_dir, fit_paths, test_path = checked["category_dir"], checked["fit_paths"], checked["test_path"]
    outputs = checked["outputs"]
    with outputs.claimed():
        fit_splits = [load_split(path, warn=False) for path in fit_paths]
        test_split = load_split(test_path, warn=False)
        fit_records = [record for rows in fit_splits for record in rows[: args.limit]]
        test_records = test_split[: args.limit]

        settings = ModelSettings(k=args.k, max_iter=args.max_iter, pmf_max_iter=args.pmf_max_iter, seed=args.seed)
        results = run_baselines(fit_records, test_records, tuple(args.methods), settings, progress=True)
        report = {
            "category": args.category,
            "category_dir": str(category_dir),
            "fit_on": args.fit_on,
            "eval_split": "test",
            "limit": args.limit,
            "fallback_rule": "a test row whose user or item is not in the fit data is predicted as the fit global mean",
            **results,
        }
        with outputs.commit(args, timer) as staged:
            atomic_write_json(staged.path("metrics.json"), report)
            staged.record(counts={"fit_rows": results["n_fit_rows"], "test_rows": results["n_eval_rows"],
                                  **results["unknown"]})

    for rows in fit_splits:
        if rows.duplicates.count:
            print(f"warning: {rows.duplicates.describe(rows.path)}; the models fit the first rating of each "
                  "repeated (user, item)", file=sys.stderr)
    if test_split.duplicates.count:
        print(f"warning: {test_split.duplicates.describe(test_path)}; every test row is scored", file=sys.stderr)
    unknown = results["unknown"]
    print(f"read {results['n_fit_rows']} {args.fit_on} rows ({results['n_fit_users']} users, "
          f"{results['n_fit_items']} items) and {results['n_eval_rows']} test rows from {category_dir}")
    if results["n_fit_duplicates_dropped"]:
        print(f"dropped {results['n_fit_duplicates_dropped']} repeated (user, item) fit rows (cornac keeps the first)")
    print(f"test rows with an unseen user: {unknown['rows_unknown_user']}, unseen item: "
          f"{unknown['rows_unknown_item']}, either (global-mean fallback): {unknown['rows_fallback']}")
    print(format_table(results))
    print(f"wrote {outputs.folder / 'metrics.json'} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
