"""Cut a category's data down to its first N users (history order), for demos and quick experiments.

    python scripts/slice_data.py --category Movies --num_users 200 --out_root results/demo/data

Writes <out_root>/<category>/{history,train,valid,test}.jsonl.gz holding only those users' rows,
byte for byte as in the source, so every stage runs on the slice exactly as on the full data.
"""

import argparse
import gzip
import json
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
    from siren.data import iter_jsonl, resolve_category_dir
    from siren.io import atomic_path, check_outputs_free

    if args.num_users < 1:
        raise SirenError("--num_users must be at least 1")
    source = resolve_category_dir(args.category, args.data_root)
    target = Path(args.out_root) / args.category
    check_outputs_free([target], args.overwrite)

    users: set[str] = set()
    for _, record in iter_jsonl(source / "history.jsonl.gz"):
        if len(users) == args.num_users:
            break
        users.add(record["user_id"])
    counts = {}
    with atomic_path(target) as tmp:
        tmp.mkdir(parents=True)
        for name in FILES:
            kept = 0
            with gzip.open(source / f"{name}.jsonl.gz", "rt", encoding="utf-8") as src, \
                    gzip.open(tmp / f"{name}.jsonl.gz", "wt", encoding="utf-8") as dst:
                for line in src:
                    if line.strip() and json.loads(line).get("user_id") in users:
                        dst.write(line)
                        kept += 1
            counts[name] = kept
    print(f"sliced {source} to {len(users)} users -> {target}: "
          + ", ".join(f"{name} {n} rows" for name, n in counts.items()))


if __name__ == "__main__":
    sys.exit(run_main(main))
