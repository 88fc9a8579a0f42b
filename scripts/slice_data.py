"""Cut a category's data down to its first N users (history order), for demos and quick experiments.

    python scripts/slice_data.py --category Movies --num_users 200 --out_root results/demo/data

Writes <out_root>/<category>/{history,train,valid,test}.jsonl.gz holding only those users' rows,
byte for byte as in the source, so every stage runs on the slice exactly as on the full data.
Every source row is checked as the stages check it (siren.data); the four files appear together
or not at all (a missing, corrupt or truncated source file leaves nothing behind).
"""

import argparse
import gzip
import sys
from pathlib import Path

from siren.cli import run_main

FILES = ("history", "train", "valid", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="Movies", help="category folder name (default: %(default)s)")
    parser.add_argument("--data_root", default=None, help="folder holding <category>/ (default: searched as by every stage)")
    parser.add_argument("--num_users", type=int, default=200, help="users kept, first in history.jsonl.gz (default: %(default)s)")
    parser.add_argument("--out_root", required=True, help="writes <out_root>/<category>/")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing slice")
    args = parser.parse_args()

    from siren import SirenError
    from siren.data import check_history_record, check_split_record, require_file, resolve_category_dir
    from siren.io import atomic_outputs, iter_jsonl, iter_text_lines, parse_jsonl_line

    if args.num_users < 1:
        raise SirenError("--num_users must be at least 1")
    source = resolve_category_dir(args.category, args.data_root)
    sources = {name: require_file(source / f"{name}.jsonl.gz", f"{name} file") for name in FILES}
    target = Path(args.out_root) / args.category
    outputs = [f"{name}.jsonl.gz" for name in FILES]

    counts = {}
    with atomic_outputs(target, outputs, overwrite=args.overwrite) as staged:
        users: set[str] = set()
        for lineno, record in iter_jsonl(sources["history"]):
            if len(users) == args.num_users:
                break
            users.add(check_history_record(record, sources["history"], lineno)["user_id"])
        for name in FILES:
            check_record = check_history_record if name == "history" else check_split_record
            kept = 0
            # newline="" writes each line exactly as read, so the slice is byte for byte the source.
            with gzip.open(staged.path(f"{name}.jsonl.gz"), "wt", encoding="utf-8", newline="") as dst:
                for lineno, line in iter_text_lines(sources[name]):
                    if not line.strip():
                        continue
                    record = check_record(parse_jsonl_line(sources[name], lineno, line), sources[name], lineno)
                    if record["user_id"] in users:
                        dst.write(line)
                        kept += 1
            counts[name] = kept
    print(f"sliced {source} to {len(users)} users -> {target}: "
          + ", ".join(f"{name} {n} rows" for name, n in counts.items()))


if __name__ == "__main__":
    sys.exit(run_main(main))
