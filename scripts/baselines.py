"""Classical rating baselines (constant 5.0, global mean, user+item bias, MF, PMF) with cornac.

    python scripts/baselines.py --category Movies --out_dir results/demo/baselines

Fits on train (or train+valid with --fit_on train+valid), scores MAE / RMSE / accuracy on test with
siren.metrics, and writes <out_dir>/metrics.json and manifest.json. A test row whose user or item
is not in the fit data is predicted as the global mean; the count is reported. About 10 s on
2 CPU cores for the full Movies split, most of it reading the files.
"""

import argparse
import sys

from siren.cli import run_main


def parse_args() -> argparse.Namespace:
    from siren.baselines import FIT_CHOICES, METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="Movies", help="dataset category (default: %(default)s)")
    parser.add_argument("--data_root", default=None,
                        help="folder holding <category>/ (default: $SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data)")
    parser.add_argument("--out_dir", default="results/baselines", help="where metrics.json goes (default: %(default)s)")
    parser.add_argument("--fit_on", choices=sorted(FIT_CHOICES), default="train",
                        help="split(s) the models are fitted on (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="baselines to run (default: all)")
    parser.add_argument("--limit", type=int, default=None,
                        help="keep only the first LIMIT rows of each split, as preprocess_grpo.py --limit does, "
                             "so the test rows are those the LLM stages score (default: all rows)")
    parser.add_argument("--k", type=int, default=10, help="latent factors of MF and PMF (default: %(default)s)")
    parser.add_argument("--max_iter", type=int, default=20,
                        help="SGD epochs of the bias model and MF (default: %(default)s)")
    parser.add_argument("--pmf_max_iter", type=int, default=100, help="epochs of PMF (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of every model (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing metrics.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    from pathlib import Path

    from siren import SirenError
    from siren.baselines import FIT_CHOICES, ModelSettings, format_table, run_baselines
    from siren.data import load_split, resolve_category_dir, split_path
    from siren.io import MANIFEST_NAME, RunTimer, atomic_outputs, atomic_write_json, check_outputs_free, write_manifest

    timer = RunTimer()
    if args.limit is not None and args.limit < 1:
        raise SirenError(f"--limit must be at least 1, got {args.limit}")
    if args.k < 1 or args.max_iter < 1 or args.pmf_max_iter < 1:
        raise SirenError("--k, --max_iter and --pmf_max_iter must be at least 1")
    out_dir = Path(args.out_dir)
    metrics_path = out_dir / "metrics.json"
    check_outputs_free([metrics_path, out_dir / MANIFEST_NAME], args.overwrite)  # and a usable out_dir

    category_dir = resolve_category_dir(args.category, args.data_root)
    fit_paths = [split_path(category_dir, split) for split in FIT_CHOICES[args.fit_on]]
    test_path = split_path(category_dir, "test")
    fit_records = [record for path in fit_paths for record in load_split(path)[: args.limit]]
    test_records = load_split(test_path)[: args.limit]

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
    with atomic_outputs(out_dir, [metrics_path.name, MANIFEST_NAME], overwrite=args.overwrite) as staged:
        atomic_write_json(staged.path(metrics_path.name), report)
        write_manifest(
            staged.dir, script="baselines.py", args=args, inputs=[*fit_paths, test_path], outputs=[metrics_path],
            counts={"fit_rows": results["n_fit_rows"], "test_rows": results["n_eval_rows"], **results["unknown"]},
            seconds=timer.seconds,
        )

    unknown = results["unknown"]
    print(f"read {results['n_fit_rows']} {args.fit_on} rows ({results['n_fit_users']} users, "
          f"{results['n_fit_items']} items) and {results['n_eval_rows']} test rows from {category_dir}")
    if results["n_fit_duplicates_dropped"]:
        print(f"dropped {results['n_fit_duplicates_dropped']} repeated (user, item) fit rows (cornac keeps the first)")
    print(f"test rows with an unseen user: {unknown['rows_unknown_user']}, unseen item: "
          f"{unknown['rows_unknown_item']}, either (global-mean fallback): {unknown['rows_fallback']}")
    print(format_table(results))
    print(f"wrote {metrics_path} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
