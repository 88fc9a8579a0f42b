r"""Streaming benchmark of scripts/build_category.py: lines/s and peak memory on a generated raw file.

    python scripts/bench_build_category.py --lines 5000000 --output_dir results/bench_build_category

Writes a review file and a meta file in the Amazon Reviews 2023 format (gzip, one JSON object a
line, every field of the real files) into --work_dir, runs build_category.py on them as a fresh
process and records its wall time, review lines per second (over the whole run and over reading
the review file alone), the time of each step and the builder's own peak resident memory (VmHWM,
taken by siren.tools.peak_memory), with the machine and its load. Reviews per user follow a Zipf law (exponent
2.2, capped at --max_user_reviews): most users have one or two and about a tenth reach the 5-core,
about as in Books (10.3M users, 29.5M reviews); item popularity is skewed too, and some
(user, item) pairs repeat. Review texts are cut from a random-word corpus at random offsets. The
data is generated in a forked worker, so the builder starts from a small parent.

The builder writes a train row per history interaction, each with its whole earlier history, so its
output grows with the square of a user's interactions; --max_users (passed to the builder, as for a
paper-sized run) keeps the writing small next to the streaming this benchmark is about.

With several --text_chars values, the same interactions are generated and built once per value:
the files grow with the text length while the kept interactions stay the same, which shows
whether the builder's memory follows the file size or the interactions.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from siren import SirenError, cli
from siren.cli import nonnegative_int, positive_int, run_main

REPO = Path(__file__).resolve().parents[1]
RATING_SHARES = (0.08, 0.06, 0.10, 0.20, 0.56)  # about the star distribution of Amazon reviews
FIRST_MS, LAST_MS = 946684800000, 1679000000000  # 2000-01-01 .. 2023-03


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    parser.add_argument("--lines", type=positive_int, default=5_000_000, help="review lines to generate")
    parser.add_argument("--reviews_per_user", type=float, default=2.9,
                        help="lines / distinct users (Books: 29.5M reviews, 10.3M users)")
    parser.add_argument("--reviews_per_item", type=float, default=6.7,
                        help="lines / distinct items (Books: 29.5M reviews, 4.4M items)")
    parser.add_argument("--max_user_reviews", type=positive_int, default=1000,
                        help="cap of one user's reviews in the generated file")
    parser.add_argument("--text_chars", type=positive_int, nargs="+", default=[400],
                        help="mean review text length; one build per value, same interactions")
    parser.add_argument("--max_users", type=nonnegative_int, default=20000,
                        help="passed to build_category.py: a sample of this many users is written; 0: every user")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=None,
                        help="where the generated files and the built category go; unset: a temporary folder, "
                             "removed at the end")
    cli.add_output_dir(parser, "where bench_build_category.json goes", default="results/bench_build_category")
    cli.add_overwrite(parser, help="replace an existing bench_build_category.json")
    return parser.parse_args(argv)


def _corpus(rng: np.random.Generator, chars: int) -> str:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=n)) for n in rng.integers(2, 10, size=20_000)]
    picked = rng.choice(len(words), size=chars // 5)
    return " ".join(words[i] for i in picked)[:chars]


def _user_of_each_line(rng: np.random.Generator, lines: int, reviews_per_user: float, cap: int) -> np.ndarray:
    """A user index per review line: Zipf(2.2) reviews per user, capped, in random order."""
    n_users = max(1, int(lines / reviews_per_user))
    counts = np.minimum(rng.zipf(2.2, size=n_users), cap)
    users = np.repeat(np.arange(n_users), counts)
    while len(users) < lines:  # the cap made the mean smaller: draw more users
        extra = np.minimum(rng.zipf(2.2, size=n_users), cap)
        users = np.r_[users, np.repeat(np.arange(len(counts), len(counts) + n_users), extra)]
        counts = np.r_[counts, extra]
    return rng.permutation(users[:lines])


def generate(work: Path, args: argparse.Namespace, text_chars: int) -> dict:
    """The review and meta files (same interactions for any text length, given the seed)."""
    rng = np.random.default_rng(args.seed)
    user_of_line = _user_of_each_line(rng, args.lines, args.reviews_per_user, args.max_user_reviews)
    n_items = max(1, int(args.lines / args.reviews_per_item))
    corpus = _corpus(np.random.default_rng(args.seed + 1), 4_000_000)
    text_rng = np.random.default_rng(args.seed + 2 + text_chars)
    reviews_path, meta_path = work / "Bench.jsonl.gz", work / "meta_Bench.jsonl.gz"
    chunk = 50_000
    with gzip.open(reviews_path, "wt", encoding="utf-8", compresslevel=6) as out:
        for start in range(0, args.lines, chunk):
            users = user_of_line[start:start + chunk]
            size = len(users)
            items = (n_items * rng.random(size) ** 2).astype(np.int64)  # u**2: popular items
            stamps = rng.integers(FIRST_MS, LAST_MS, size=size)
            ratings = rng.choice(5, size=size, p=RATING_SHARES) + 1
            lengths = text_rng.integers(text_chars // 4, text_chars * 7 // 4 + 1, size=size)
            offsets = text_rng.integers(0, len(corpus) - lengths.max() - 25, size=size)
            out.write("".join(
                f'{{"rating": {r}.0, "title": "{corpus[o:o + 24]}", "text": "{corpus[o + 24:o + 24 + n]}", '
                f'"images": [], "asin": "B{i:09d}", "parent_asin": "B{i:09d}", "user_id": "AE{u:026X}", '
                f'"timestamp": {t}, "helpful_vote": 0, "verified_purchase": true}}\n'
                for u, i, t, r, n, o in zip(users.tolist(), items.tolist(), stamps.tolist(), ratings.tolist(),
                                            lengths.tolist(), offsets.tolist(), strict=True)))
    meta_rng = np.random.default_rng(args.seed + 3)
    with gzip.open(meta_path, "wt", encoding="utf-8", compresslevel=6) as out:
        for start in range(0, n_items, chunk):
            ids = range(start, min(n_items, start + chunk))
            offsets = meta_rng.integers(0, len(corpus) - 400, size=len(ids))
            out.write("".join(
                json.dumps({"main_category": "Books", "title": corpus[o:o + 40], "subtitle": None,
                            "average_rating": 4.5, "rating_number": 12, "features": [],
                            "description": [corpus[o + 40:o + 400]], "price": 9.99, "images": [], "videos": [],
                            "store": corpus[o:o + 12], "categories": ["Books", corpus[o + 50:o + 62]],
                            "details": {"Publisher": corpus[o + 70:o + 90], "Language": "English"},
                            "parent_asin": f"B{i:09d}", "bought_together": None}) + "\n"
                for i, o in zip(ids, offsets.tolist(), strict=True)))
    return {"review_lines": args.lines, "users": int(len(np.unique(user_of_line))),
            "most_reviews_of_one_user": int(np.bincount(user_of_line).max()), "items": n_items,
            "text_chars": text_chars, "reviews_gz_bytes": reviews_path.stat().st_size,
            "meta_gz_bytes": meta_path.stat().st_size, "reviews_path": str(reviews_path), "meta_path": str(meta_path)}


def run_build(reviews: Path, meta: Path, output_root: Path, max_users: int) -> dict:
    """build_category.py as a child process: wall seconds, its step times and its peak memory."""
    peak_path = output_root.parent / "peak_memory.json"
    command = [sys.executable, "-m", "siren.tools.peak_memory", "--report", str(peak_path), "--",
               str(REPO / "scripts" / "build_category.py"), "--category", "Bench", "--reviews",
               str(reviews), "--meta", str(meta), "--output_root", str(output_root), "--overwrite",
               *(["--max_users", str(max_users)] if max_users else [])]
    log_path = output_root.parent / "build.log"
    with open(log_path, "w") as log:
        start = time.perf_counter()
        child = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
    if child.returncode != 0:
        last = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        raise SirenError(f"build_category.py failed (exit {child.returncode}): {last[0]} (log: {log_path})")
    built = output_root / "Bench"
    manifest = json.loads((built / "manifest.json").read_text())
    return {"seconds": round(seconds, 2), "peak_rss_mb": json.loads(peak_path.read_text())["peak_rss_mb"],
            "phase_seconds": manifest["phase_seconds"], "stats": json.loads((built / "stats.json").read_text())}


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from siren.io import atomic_write_json, check_output_folder

    out_json = Path(args.output_dir) / "bench_build_category.json"
    check_output_folder(out_json.parent, [out_json.name], args.overwrite)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="siren-bench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    fork = multiprocessing.get_context("fork")
    try:
        for text_chars in args.text_chars:
            started = time.perf_counter()
            with ProcessPoolExecutor(1, mp_context=fork) as worker:  # its memory goes with it
                info = worker.submit(generate, work, args, text_chars).result()
            info["generate_seconds"] = round(time.perf_counter() - started, 1)
            print(f"generated {info['review_lines']:,} review lines ({info['reviews_gz_bytes'] / 1e6:,.0f} MB gz, "
                  f"text ~{text_chars} chars, {info['users']:,} users, at most {info['most_reviews_of_one_user']:,} "
                  f"reviews of one user) and {info['items']:,} meta lines in {info['generate_seconds']}s")
            load_before = machine()["load_average"]
            result = run_build(Path(info.pop("reviews_path")), Path(info.pop("meta_path")), work / "built",
                               args.max_users)
            run = {**info, **result, "load_before": load_before, "load_after": machine()["load_average"],
                   "review_lines_per_s": round(info["review_lines"] / result["seconds"]),
                   "review_lines_per_s_reading": round(info["review_lines"] / result["phase_seconds"]["reading_reviews"])}
            runs.append(run)
            print(f"  build: {result['seconds']}s ({run['review_lines_per_s']:,} review lines/s; reading the reviews "
                  f"{result['phase_seconds']['reading_reviews']}s, {run['review_lines_per_s_reading']:,} lines/s), "
                  f"peak RSS {result['peak_rss_mb']:,} MB; {result['stats']['table_row']} "
                  "(Dataset | Train | Valid | Test | User | Item)")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    atomic_write_json(out_json, {"machine": machine(), "args": vars(args), "runs": runs})
    print(f"wrote {out_json}")


if __name__ == "__main__":
    sys.exit(run_main(main))
