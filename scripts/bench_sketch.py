r"""Benchmark stage 1 on a whole category: cold run, warm-cache run, and the pure-encode floor.

    python scripts/bench_sketch.py --category Movies --encoder_model minilm --out_json results/bench_sketch.json

Each run is a fresh process. --repeats times (default 3), in alternating order:
  - encode only: load the encoder and `encode` the stage's distinct item texts (same batch size,
    max length and threads), nothing else; its `encode` call is the floor the stage cannot beat;
  - cold: generate_interest_sketch.py with an empty embedding cache (one cache per repeat);
then --repeats warm runs: the same command on the filled cache (other output folders).
Reports medians, and cold / encode, the ratio the stage's overhead shows in (target <= 1.15), next
to cold / (whole encode-only process), which also charges the floor for importing torch, and
cold / (the cold run's own `encode` call), which does not depend on the machine's load staying the
same between runs (on a shared machine it does not). The cold run nearest the median is split into
importing + loading the encoder, encoding, and the rest (the stage's own work and process start/exit).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from siren import cli
from siren.cli import nonnegative_int, positive_int, run_main

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_category(parser, help="category to run on")
    cli.add_data_root(parser)
    parser.add_argument("--encoder_model", default="minilm", help="encoder")
    parser.add_argument("--encode_batch_size", type=positive_int, default=64, help="encoder batch size")
    parser.add_argument("--encode_max_len", type=positive_int, default=512, help="encoder token limit")
    parser.add_argument("--threads", type=nonnegative_int, default=0, help="encoder CPU threads, 0 = torch default")
    parser.add_argument("--tokenizer", default=None, help="pass --tokenizer to the stage, e.g. ckpt/tiny-qwen3")
    parser.add_argument("--work_dir", default=None, help="where outputs and the cache go; unset: a temporary folder")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="encode-only and cold runs (alternating) and warm runs; medians are reported")
    parser.add_argument("--out_json", default=None, help="also write the figures here; unset: print only")
    parser.add_argument("--encode_only", action="store_true", help=argparse.SUPPRESS)
    cli.add_overwrite(parser, help="replace an existing --out_json")
    return parser.parse_args(argv)


def stage_texts(args: argparse.Namespace) -> list[str]:
    """The distinct texts the stage encodes (same item table code as the stage)."""
    from siren.data import load_history, load_split, resolve_category_dir
    from siren.items import distinct_texts
    from siren.sketch import load_items

    category_dir = resolve_category_dir(args.category, args.data_root)
    history_path = category_dir / "history.jsonl.gz"
    splits = [row for s in ("train", "valid", "test") for row in load_split(category_dir / f"{s}.jsonl.gz")]
    return distinct_texts(load_items(load_history(history_path), splits, history_path).texts)[0]


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


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarize(floors: list[dict], colds: list[dict], warms: list[dict]) -> dict:
    """Medians over the repeats, and the ratios the targets are about."""
    encode = median([f["encode_seconds"] for f in floors])
    cold = median([c["wall_seconds"] for c in colds])
    warm = median([w["wall_seconds"] for w in warms])
    # The cold run nearest the median, split into what any encoding process pays and the rest.
    typical = min(colds, key=lambda c: abs(c["wall_seconds"] - cold))
    load, own_encode = typical["encoder"]["load_seconds"], typical["encoder"]["encode_seconds"]
    return {
        "encode_seconds": round(encode, 2),
        "encode_process_seconds": round(median([f["process_seconds"] for f in floors]), 2),
        "encode_import_and_load_seconds": round(median([f["import_and_load_seconds"] for f in floors]), 2),
        "cold_seconds": round(cold, 2),
        "warm_seconds": round(warm, 2),
        "cold_over_encode": round(cold / encode, 3),
        "cold_over_encode_per_repeat": [round(c["wall_seconds"] / f["encode_seconds"], 3) for f, c in zip(floors, colds, strict=True)],
        "cold_over_encode_process": round(cold / median([f["process_seconds"] - f["data_seconds"] for f in floors]), 3),
        # Within each cold run: immune to the machine's load changing between the floor and the run.
        "cold_over_own_encode": round(median([c["wall_seconds"] / c["encoder"]["encode_seconds"] for c in colds]), 3),
        "typical_cold_run": {
            "wall_seconds": round(typical["wall_seconds"], 2),
            "encoder_import_and_load_seconds": round(load, 2),
            "encode_seconds": round(own_encode, 2),
            "rest_seconds": round(typical["wall_seconds"] - load - own_encode, 2),
            "stage_timings": typical["timings"],
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.encode_only:
        encode_only(args)
        return
    from siren import SirenError

    if args.out_json and Path(args.out_json).is_dir():
        raise SirenError(f"--out_json {args.out_json} is a folder; give a file path")
    if args.out_json and Path(args.out_json).exists() and not args.overwrite:
        raise SirenError(f"output already exists: {args.out_json} (pass --overwrite to replace it)")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_sketch_"))
    caches = [work / f"cache-{r}" for r in range(args.repeats)]
    for cache in caches:
        if cache.exists() and any(cache.iterdir()):
            raise SirenError(f"{cache} is not empty; a cold run needs an empty cache (use another --work_dir)")
    shared = ["--category", args.category, "--encoder_model", args.encoder_model,
              "--encode_batch_size", str(args.encode_batch_size), "--encode_max_len", str(args.encode_max_len),
              "--threads", str(args.threads)] + (["--data_root", args.data_root] if args.data_root else [])
    python = sys.executable
    stage = [python, "generate_interest_sketch.py", *shared]
    if args.tokenizer:
        stage += ["--tokenizer", args.tokenizer]

    def floor_run() -> dict:
        wall, proc = timed([python, str(Path(__file__).resolve()), "--encode_only", *shared])
        return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_seconds": wall}

    def stage_run(cache: Path, out: Path) -> dict:
        wall, _ = timed([*stage, "--cache_dir", str(cache), "--output_dir", str(out), "--overwrite"])
        manifest = json.loads((out / "manifest.json").read_text())
        return {"wall_seconds": wall, "timings": manifest["timings"],
                "encoder": {k: manifest["encoder"].get(k) for k in ("load_seconds", "encode_seconds", "threads", "device")}}

    floors: list[dict] = []
    colds: list[dict] = []
    for r in range(args.repeats):
        # Alternate which goes first, so a drift in the machine's speed falls on both alike.
        for kind in (("floor", "cold") if r % 2 == 0 else ("cold", "floor")):
            print(f"repeat {r + 1}/{args.repeats}: {'encode only' if kind == 'floor' else 'cold run'} ...", flush=True)
            if kind == "floor":
                floors.append(floor_run())
            else:
                colds.append(stage_run(caches[r], work / f"cold-{r}"))
    warms = []
    for r in range(args.repeats):
        print(f"warm run {r + 1}/{args.repeats} ...", flush=True)
        warms.append(stage_run(caches[0], work / f"warm-{r}"))

    figures = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu_cores": os.cpu_count(), "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "category": args.category,
        "encoder": args.encoder_model,
        "texts": floors[0]["texts"],
        "repeats": args.repeats,
        **summarize(floors, colds, warms),
        "runs": {"encode_only": floors, "cold": colds, "warm": warms},
        "targets": {"cold_seconds": 90, "warm_seconds": 15, "cold_over_encode": 1.15},
    }
    print(json.dumps({k: v for k, v in figures.items() if k != "runs"}, indent=2))
    print(f"medians over {args.repeats} repeat(s): encode {figures['encode_seconds']}s, cold {figures['cold_seconds']}s "
          f"(target <= 90), warm {figures['warm_seconds']}s (target <= 15), cold / encode {figures['cold_over_encode']} "
          f"(target <= 1.15)")
    if args.out_json:
        from siren.io import atomic_write_json

        atomic_write_json(args.out_json, figures)
        print(f"wrote {args.out_json}")


if __name__ == "__main__":
    sys.exit(run_main(main))
