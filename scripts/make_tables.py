"""Collect a run's metrics and write the paper-style tables (accuracy, token efficiency, latency) + figure.

    python scripts/make_tables.py --run_dir results/demo

Reads <run_dir>/baselines/metrics.json, prompt_stats.json, prompt_tokens_test.npz,
cot_test/metrics.json, ao_before/metrics.json, ao_after/metrics.json and
bench_latency/latency.json (each path is a flag; see siren/tables.py for the layout). A missing input
gives rows that say "not run". Writes tables.md, accuracy.csv, token_efficiency.csv, latency.csv,
tables.png and manifest.json into --out_dir (default: the run directory). Takes a few seconds.
"""

import argparse
import sys

from siren.cli import run_main

INPUT_FLAGS = {
    "baselines": "baselines/metrics.json",
    "prompt_stats": "prompt_stats.json",
    "prompt_tokens": "prompt_tokens_test.npz",
    "cot_test": "cot_test/metrics.json",
    "ao_before": "ao_before/metrics.json",
    "ao_after": "ao_after/metrics.json",
    "bench_latency": "bench_latency/latency.json",
}
OUTPUT_NAMES = ("tables.md", "accuracy.csv", "token_efficiency.csv", "latency.csv", "tables.png")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", default="results/demo", help="the run directory (default: %(default)s)")
    parser.add_argument("--out_dir", default=None, help="where the tables go (default: --run_dir)")
    for name, relative in INPUT_FLAGS.items():
        parser.add_argument(f"--{name}", default=None, help=f"input file (default: <run_dir>/{relative})")
    parser.add_argument("--token_split", default="test", choices=("train", "val", "test"),
                        help="prompt_stats.json split of the token-efficiency table (default: %(default)s)")
    parser.add_argument("--no_figure", action="store_true", help="skip tables.png")
    parser.add_argument("--overwrite", action="store_true", help="replace existing tables")
    return parser.parse_args()


def main() -> None:
    args = parse_args()

    from pathlib import Path

    from siren import SirenError
    from siren.io import RunTimer, atomic_write_text, check_outputs_free, write_manifest
    from siren.tables import (
        ACCURACY_COLUMNS,
        LATENCY_COLUMNS,
        TOKEN_COLUMNS,
        RunInputs,
        build_tables,
        draw_figure,
        load_token_counts,
        render_markdown,
        write_csv,
    )

    timer = RunTimer()
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise SirenError(f"run directory {run_dir} does not exist")
    inputs = RunInputs.default(run_dir)
    for name in INPUT_FLAGS:
        if getattr(args, name):
            setattr(inputs, name, Path(getattr(args, name)))
    out_dir = Path(args.out_dir) if args.out_dir else run_dir
    names = [n for n in OUTPUT_NAMES if not (args.no_figure and n.endswith(".png"))]
    outputs = [out_dir / n for n in names]
    check_outputs_free(outputs, args.overwrite)

    tables = build_tables(inputs, args.token_split)
    figure_name = None if args.no_figure else "tables.png"
    if figure_name:
        draw_figure(out_dir / figure_name, tables, load_token_counts(inputs.prompt_tokens))
    write_csv(out_dir / "accuracy.csv", tables.accuracy, ACCURACY_COLUMNS)
    write_csv(out_dir / "token_efficiency.csv", tables.tokens, TOKEN_COLUMNS)
    write_csv(out_dir / "latency.csv", tables.latency, LATENCY_COLUMNS)
    markdown = render_markdown(tables, run_dir, figure_name)
    # tables.md last: its presence means the whole set is finished.
    atomic_write_text(out_dir / "tables.md", markdown)

    found = {name: path for name, path in inputs.as_dict().items() if path.is_file()}
    missing = sorted(set(INPUT_FLAGS) - set(found))
    write_manifest(out_dir, script="make_tables.py", args=args, inputs=list(found.values()), outputs=outputs,
                   counts={"inputs_found": len(found), "inputs_missing": missing}, seconds=timer.seconds)

    print(markdown)
    print(f"read {len(found)} of {len(INPUT_FLAGS)} inputs from {run_dir}"
          + (f" (not run: {', '.join(missing)})" if missing else ""))
    print(f"wrote {', '.join(str(p) for p in outputs)}")


if __name__ == "__main__":
    sys.exit(run_main(main))
