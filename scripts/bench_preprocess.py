r"""Time stage 2 end to end: preprocess_grpo.py on a whole category with Qwen-token statistics.

    python scripts/bench_preprocess.py --category Movies --tokenizer ckpt/tiny-qwen3 --repeats 3

Each repeat runs `preprocess_grpo.py --use_long_history false --tokenizer ... --overwrite` (no
sketch) as a fresh process (imports included) into a temporary folder and measures its wall time.
Build the tokenizer first with `python scripts/make_tiny_model.py --output_dir ckpt/tiny-qwen3` (it
has the real Qwen3 vocabulary).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from siren import cli
from siren.cli import positive_int, run_main

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_category(parser, help="category to preprocess")
    cli.add_data_root(parser)
    parser.add_argument("--tokenizer", default="ckpt/tiny-qwen3", help="tokenizer (or model) folder, as stage 2's --tokenizer")
    parser.add_argument("--max_history", type=positive_int, default=10, help="passed on to preprocess_grpo.py")
    cli.add_limit(parser, help="passed on to preprocess_grpo.py: first N rows of each split (unset: all)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs")
    parser.add_argument("--out_json", default=None, help="also write the timings here; unset: print only")
    cli.add_overwrite(parser, help="replace an existing --out_json")
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    from siren import SirenError

    if not Path(args.tokenizer).exists():
        raise SirenError(f"--tokenizer {args.tokenizer} not found; build it: python scripts/make_tiny_model.py "
                         f"--out_dir {args.tokenizer}")
    if args.out_json:
        from siren.io import check_output_folder

        if Path(args.out_json).is_dir():
            raise SirenError(f"--out_json {args.out_json} is a folder; give a file path")
        check_output_folder(Path(args.out_json).parent, [Path(args.out_json).name], args.overwrite)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    validate(args)

    from siren import SirenError
    from siren.io import atomic_write_json

    seconds = []
    with tempfile.TemporaryDirectory(prefix="bench_preprocess_") as tmp:
        command = [sys.executable, str(REPO / "preprocess_grpo.py"), "--category", args.category,
                   "--max_history", str(args.max_history), "--use_long_history", "false", "--tokenizer", str(args.tokenizer),
                   "--output_dir", str(Path(tmp) / "out"), "--overwrite"]
        command += ["--data_root", args.data_root] if args.data_root else []
        command += ["--limit", str(args.limit)] if args.limit else []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                raise SirenError(f"preprocess_grpo.py failed: {(proc.stderr.strip().splitlines() or ['(no message)'])[-1]}")
            seconds.append(round(elapsed, 2))
            print(f"run {repeat + 1}/{args.repeats}: {elapsed:.1f}s")
        manifest = json.loads((Path(tmp) / "out" / "manifest.json").read_text())

    result = {
        "what": "preprocess_grpo.py end to end (process start to exit) with prompt-token statistics",
        "category": args.category,
        "rows": manifest["counts"]["rows"],
        "token_counting": manifest["counts"]["token_counting"],
        "seconds": seconds,
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    if args.out_json:
        atomic_write_json(args.out_json, result)
        print(f"wrote {args.out_json}")


if __name__ == "__main__":
    sys.exit(run_main(main))
