r"""Collect a run's metrics and write the paper-style tables (accuracy, token efficiency, latency) + figure.

    python scripts/make_tables.py --run_dir results/demo

Reads <run_dir>/baselines/metrics.json, prompt_stats.json, prompt_tokens_test.npz,
ao_zero_shot/, ao_warm/, cot_test/, ao_before/, ao_after/ and ao_ce_only/metrics.json,
bench_latency/latency.json, the GRPO and alignment train logs and timings.json (each path is a flag;
see siren/tools/table_inputs.py for the layout). A missing input gives rows that say "not run"; a run folder
with none of them is refused. A file that is not that input's kind (e.g. any JSON as --ao_before),
a prediction run on another split than test (its manifest.json), or a number out of its range (a
negative RMSE) is refused with one line. Writes tables.md, accuracy.csv, token_efficiency.csv,
latency.csv, tables.png (+ timings.csv with timings.json) and manifest.json into --output_dir
(default: <run_dir>/tables, beside its inputs, not among them), all of them or none. Takes a few
seconds.
"""

import argparse
import sys

from siren import cli
from siren.cli import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from siren.tools.table_inputs import INPUTS

    parser = cli.stage_parser(__doc__)
    parser.add_argument("--run_dir", default="results/demo", help="the run directory the inputs are read from")
    cli.add_output_dir(parser, "where the tables go; unset: <run_dir>/tables")
    for spec in INPUTS:
        parser.add_argument(f"--{spec.key}", default=None,
                            help=f"{spec.what}; unset: <run_dir>/{spec.relative_path}")
    parser.add_argument("--token_split", default="test", choices=("train", "val", "test"),
                        help="prompt_stats.json split of the token-efficiency table")
    parser.add_argument("--no_figure", action="store_true", help="skip tables.png")
    cli.add_overwrite(parser, help="replace existing tables (other files in the folder stay)")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """The inputs found (at least one) and the output folder, clear of them; before any is read."""
    from pathlib import Path

    from siren import SirenError
    from siren.outputs import StageOutputs
    from siren.tools.table_inputs import INPUTS, RunInputs

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise SirenError(f"run directory {run_dir} does not exist")
    inputs = RunInputs.default(run_dir)
    for spec in INPUTS:
        if getattr(args, spec.key):
            setattr(inputs, spec.key, Path(getattr(args, spec.key)))
    found = {name: path for name, path in inputs.as_dict().items() if path.is_file()}
    if not found:
        raise SirenError(f"no inputs in {run_dir}: none of {', '.join(spec.relative_path for spec in INPUTS)} is there")
    names = ["tables.md", "accuracy.csv", "token_efficiency.csv", "latency.csv"]
    names += ["tables.png"] * (not args.no_figure) + ["timings.csv"] * ("timings" in found)
    outputs = StageOutputs(args.output_dir or run_dir / "tables", names, script="make_tables.py",
                           inputs=found.values(), overwrite=args.overwrite).check()
    return {"run_dir": run_dir, "inputs": inputs, "found": found, "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checked = validate(args)

    from siren.io import RunTimer
    from siren.tools.table_figure import draw_figure
    from siren.tools.table_inputs import INPUTS, load_token_counts
    from siren.tools.tables import build_tables, write_tables

    timer = RunTimer()
    run_dir, inputs, found, outputs = checked["run_dir"], checked["inputs"], checked["found"], checked["outputs"]
    missing = [spec.key for spec in INPUTS if spec.key not in found]
    with outputs.claimed():
        tables = build_tables(inputs, args.token_split)  # reads and checks every input first
        token_counts = None if args.no_figure else load_token_counts(inputs.prompt_tokens)
        with outputs.commit(args, timer) as staged:
            figure_name = None if args.no_figure else "tables.png"
            if figure_name:
                draw_figure(staged.path(figure_name), tables, token_counts)
            markdown = write_tables(staged.dir, tables, run_dir, figure_name)
            staged.record(counts={"inputs_found": len(found), "inputs_missing": missing})

    print(markdown)
    print(f"read {len(found)} of {len(INPUTS)} inputs from {run_dir}"
          + (f" (not run: {', '.join(missing)})" if missing else ""))
    print(f"wrote {', '.join(outputs.names)} to {outputs.folder}")


if __name__ == "__main__":
    sys.exit(run_main(main))
