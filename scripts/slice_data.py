r"""Cut a category's data down to its first N users (history order), for demos and quick experiments.

    python scripts/slice_data.py --category Movies --num_users 200 --output_root results/demo/data

Writes <output_root>/<category>/{history,train,valid,test}.jsonl.gz holding only those users' rows,
byte for byte as in the source, so every stage runs on the slice exactly as on the full data (pass
the same folder as their --data_root). Every source row is checked as the stages check it
(siren.data); the four files and manifest.json appear together or not at all (a missing, corrupt
or truncated source file leaves nothing behind).
"""

import argparse
import gzip
import sys
from pathlib import Path

from siren import cli
from siren.cli import positive_int, run_main

FILES = ("history", "train", "valid", "test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_category(parser)
    cli.add_data_root(parser)
    parser.add_argument("--num_users", type=positive_int, default=200, help="users kept, first in history.jsonl.gz")
    # A data root like --data_root (it holds <category>/), not a stage's output folder: hence _root, not _dir.
    parser.add_argument("--output_root", "--out_root", dest="output_root", required=True,
                        help="the new data root: writes <output_root>/<category>/")
    cli.add_overwrite(parser, help="replace the four files of an existing slice (other files stay)")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """The source files and the output folder, clear of them; before any is read."""
    from siren.data import require_file, resolve_category_dir
    from siren.outputs import StageOutputs

    source = resolve_category_dir(args.category, args.data_root)
    sources = {name: require_file(source / f"{name}.jsonl.gz", f"{name} file") for name in FILES}
    outputs = StageOutputs(Path(args.output_root) / args.category, [f"{name}.jsonl.gz" for name in FILES],
                           script="scripts/slice_data.py", inputs=sources.values(), overwrite=args.overwrite,
                           flag="--output_root").check()
    return {"source": source, "sources": sources, "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checked = validate(args)

    from siren.data import check_history_record, check_split_record
    from siren.io import RunTimer, iter_jsonl, iter_jsonl_lines

    timer = RunTimer()
    sources, outputs = checked["sources"], checked["outputs"]
    counts = {}
    with outputs.claimed(), outputs.commit(args, timer) as staged:
        users: set[str] = set()
        for _, record in iter_jsonl(sources["history"], check_history_record):
            if len(users) == args.num_users:
                break
            users.add(record["user_id"])
        for name in FILES:
            check_record = check_history_record if name == "history" else check_split_record
            kept = 0
            # newline="" writes each line exactly as read, so the slice is byte for byte the source.
            with gzip.open(staged.path(f"{name}.jsonl.gz"), "wt", encoding="utf-8", newline="") as dst:
                for _, line, record in iter_jsonl_lines(sources[name], check_record):
                    if record["user_id"] in users:
                        dst.write(line)
                        kept += 1
            counts[name] = kept
        staged.record(counts={"users": len(users), **{f"{name}_rows": n for name, n in counts.items()}})
    print(f"sliced {checked['source']} to {len(users)} users -> {outputs.folder}: "
          + ", ".join(f"{name} {n} rows" for name, n in counts.items()))


if __name__ == "__main__":
    sys.exit(run_main(main))
