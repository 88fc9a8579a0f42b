"""Benchmark stage 1 on a whole category: cold run, warm-cache run, and the pure-encode floor.

    python scripts/bench_sketch.py --data_category Movies --encoder_model minilm --out_json results/bench_sketch.json

Runs, each in a fresh process, in this order:
  1. encode only: load the encoder and `encode` the stage's distinct item texts (same batch size,
     max length and threads), nothing else; its `encode` call is the floor the stage cannot beat;
  2. cold: generate_interest_sketch.py with an empty embedding cache;
  3. warm: the same command again on the filled cache (other output folder).
Reports wall times and cold / encode, the ratio the stage's overhead shows in (target <= 1.15),
next to cold / (whole encode-only process), which also charges the floor for importing torch, and
cold / (the cold run's own `encode` call), which does not depend on the machine's load staying the
same between runs 1 and 2 (on a shared machine it does not).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from siren.cli import run_main

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_category", default="Movies", help="category to run on (default: %(default)s)")
    parser.add_argument("--data_root", default=None, help="folder holding <category>/ (default: the usual search path)")
    parser.add_argument("--encoder_model", default="minilm", help="encoder (default: %(default)s)")
    parser.add_argument("--encode_batch_size", type=int, default=64, help="encoder batch size (default: %(default)s)")
    parser.add_argument("--encode_max_len", type=int, default=512, help="encoder token limit (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="encoder CPU threads, 0 = torch default (default: %(default)s)")
    parser.add_argument("--tokenizer", default=None, help="pass --tokenizer to the stage, e.g. ckpt/tiny-qwen3 (default: none)")
    parser.add_argument("--work_dir", default=None, help="where outputs and the cache go (default: a temporary folder)")
    parser.add_argument("--out_json", default=None, help="also write the figures here (default: print only)")
    parser.add_argument("--encode_only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out_json")
    return parser.parse_args(argv)


def stage_texts(args: argparse.Namespace) -> list[str]:
    """The distinct texts the stage encodes (same item table code as the stage)."""
    from siren.data import load_history, load_split, resolve_category_dir
    from siren.sketch import distinct_texts, items_from_data

    category_dir = resolve_category_dir(args.data_category, args.data_root)
    history = load_history(category_dir / "history.jsonl.gz")
    splits = [row for s in ("train", "valid", "test") for row in load_split(category_dir / f"{s}.jsonl.gz")]
    return distinct_texts(items_from_data(history, splits).texts)[0]


def encode_only(args: argparse.Namespace) -> None:
    """Child process: time importing + loading the encoder and one `encode` call; print JSON."""
    start = time.perf_counter()
    texts = stage_texts(args)
    data_seconds = time.perf_counter() - start
    start = time.perf_counter()
    from siren.embedding import encode, load_encoder, resolve_encoder

    model = load_encoder(resolve_encoder(args.encoder_model), "auto", args.encode_max_len, args.threads)
    load_seconds = time.perf_counter() - start
    start = time.perf_counter()
    encode(model, texts, args.encode_batch_size, show_progress=False)
    encode_seconds = time.perf_counter() - start
    print(json.dumps({"texts": len(texts), "data_seconds": data_seconds, "import_and_load_seconds": load_seconds,
                      "encode_seconds": encode_seconds}))


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        from siren import SirenError

        raise SirenError(f"{' '.join(command[:3])} ... failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return seconds, proc


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.encode_only:
        encode_only(args)
        return
    from siren import SirenError

    if args.out_json and Path(args.out_json).exists() and not args.overwrite:
        raise SirenError(f"output already exists: {args.out_json} (pass --overwrite to replace it)")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_sketch_"))
    cache = work / "cache"
    if cache.exists() and any(cache.iterdir()):
        raise SirenError(f"{cache} is not empty; a cold run needs an empty cache (use another --work_dir)")
    shared = ["--data_category", args.data_category, "--encoder_model", args.encoder_model,
              "--encode_batch_size", str(args.encode_batch_size), "--encode_max_len", str(args.encode_max_len),
              "--threads", str(args.threads)] + (["--data_root", args.data_root] if args.data_root else [])
    python = sys.executable

    print("1/3 encode only ...", flush=True)
    floor_wall, proc = timed([python, str(Path(__file__).resolve()), "--encode_only", *shared])
    floor = json.loads(proc.stdout.strip().splitlines()[-1])

    stage = [python, "generate_interest_sketch.py", *shared, "--cache_dir", str(cache)]
    if args.tokenizer:
        stage += ["--tokenizer", args.tokenizer]
    print("2/3 cold run ...", flush=True)
    cold_wall, _ = timed([*stage, "--output_dir", str(work / "cold"), "--overwrite"])
    print("3/3 warm run ...", flush=True)
    warm_wall, _ = timed([*stage, "--output_dir", str(work / "warm"), "--overwrite"])
    cold_manifest = json.loads((work / "cold" / "manifest.json").read_text())
    warm_manifest = json.loads((work / "warm" / "manifest.json").read_text())

    figures = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu_cores": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "category": args.data_category,
        "encoder": args.encoder_model,
        "texts": floor["texts"],
        "encode_seconds": round(floor["encode_seconds"], 2),
        "encode_process_seconds": round(floor_wall, 2),
        "encode_import_and_load_seconds": round(floor["import_and_load_seconds"], 2),
        "cold_seconds": round(cold_wall, 2),
        "warm_seconds": round(warm_wall, 2),
        "cold_over_encode": round(cold_wall / floor["encode_seconds"], 3),
        "cold_over_encode_process": round(cold_wall / (floor_wall - floor["data_seconds"]), 3),
        # Within the cold run itself: immune to the load changing between the floor and the run.
        "cold_over_own_encode": round(cold_wall / cold_manifest["encoder"]["encode_seconds"], 3),
        "cold_stage_timings": cold_manifest["timings"],
        "cold_encoder": {k: cold_manifest["encoder"].get(k) for k in ("load_seconds", "encode_seconds", "threads", "device")},
        "warm_stage_timings": warm_manifest["timings"],
        "targets": {"cold_seconds": 90, "warm_seconds": 15, "cold_over_encode": 1.15},
    }
    print(json.dumps(figures, indent=2))
    if args.out_json:
        from siren.io import atomic_write_json

        atomic_write_json(args.out_json, figures)
        print(f"wrote {args.out_json}")


if __name__ == "__main__":
    sys.exit(run_main(main))
