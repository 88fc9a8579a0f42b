r"""Memory and speed of stage 4b: extract teacher hidden states for 500 and 2,000 rows, compare peak RSS.

    python scripts/bench_hidden.py --category Movies --output_dir results/bench_hidden

Builds a parquet split from the real Movies train rows and a stage 4a results.jsonl with synthetic
reasoning (the random tiny model writes none), then runs extract_last_hidden_ddp.py once per row
count in a fresh process (under siren.tools.peak_memory, which takes the peak RSS of loading the
model and, separately, of the extraction after it) and reads its rows/s from the manifest. If the hidden states
were kept in memory, peak RSS would grow with the row count; streaming to disk keeps the growth
near zero. --hidden_size/--num_layers make the random model wider so that each row's states are
big enough for a leak to show (the default tiny model has 2 x 64 floats per row, 0.5 KB).
Takes about 5 minutes on 2 shared CPU cores with the defaults.
"""

from __future__ import annotations

import argparse
import sys

from siren import cli
from siren.cli import positive_int, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_output_dir(parser, "work and report folder", default="results/bench_hidden")
    cli.add_category(parser, help="category whose train split supplies the rows")
    cli.add_data_root(parser)
    parser.add_argument("--rows", type=positive_int, nargs="+", default=[500, 2000], help="row counts to compare")
    cli.add_batch_size(parser, default=16, help="extract_last_hidden_ddp.py --batch_size")
    parser.add_argument("--hidden_size", type=positive_int, default=64, help="random model width; 64 is the tiny model")
    parser.add_argument("--num_layers", type=positive_int, default=2, help="random model depth; 2 is the tiny model")
    parser.add_argument("--threads", type=positive_int, default=1, help="OMP_NUM_THREADS of the extraction runs")
    cli.add_overwrite(parser, help="replace an existing report")
    return parser.parse_args(argv)


def synthetic_reasoning(position: int, label: float) -> str:
    """A CoT of 60-250 tokens whose answer is the label; lengths vary so batches are padded."""
    sentences = [
        "The user's recent ratings favour dramas and thrillers.",
        "Lower ratings went to broad comedies.",
        "The candidate is a drama with a well-known cast.",
        "Similar titles in the history were rated four or five stars.",
    ]
    body = " ".join(sentences[(position + k) % len(sentences)] for k in range(4 + position % 17))
    return f"<think>\n{body}\n</think>\n\n<answer>{label:.1f}</answer>"


def build_model(out_dir, hidden_size: int, num_layers: int):
    """The tiny Qwen3, or a wider random one with the same tokenizer."""
    import shutil

    from siren.tools.tiny_model import TINY_CONFIG, build_tiny_qwen3

    tiny = build_tiny_qwen3(out_dir / "tiny-qwen3")
    if (hidden_size, num_layers) == (TINY_CONFIG["hidden_size"], TINY_CONFIG["num_hidden_layers"]):
        return tiny
    import torch
    from transformers import AutoConfig, Qwen3ForCausalLM

    wide = out_dir / f"qwen3-h{hidden_size}-l{num_layers}"
    shutil.copytree(tiny, wide, dirs_exist_ok=True)
    config = AutoConfig.from_pretrained(tiny)
    heads = max(1, hidden_size // 64)
    config.update({"hidden_size": hidden_size, "num_hidden_layers": num_layers, "intermediate_size": 2 * hidden_size,
                   "num_attention_heads": heads, "num_key_value_heads": heads, "head_dim": hidden_size // heads,
                   "layer_types": ["full_attention"] * num_layers})
    torch.manual_seed(0)
    Qwen3ForCausalLM(config).save_pretrained(wide)
    return wide


def main(argv=None) -> None:
    args = parse_args(argv)
    import json
    import os
    import subprocess
    from pathlib import Path

    import pandas as pd

    from siren import SirenError
    from siren.cot_results import result_row
    from siren.data import load_split, resolve_category_dir
    from siren.io import atomic_write_json, atomic_write_text, check_output_folder
    from siren.verl_data import load_split_rows, make_row

    out_dir = Path(args.output_dir)
    report_path = out_dir / "bench_hidden.json"
    check_output_folder(out_dir, [report_path.name], args.overwrite)
    n_max = max(args.rows)
    records = load_split(resolve_category_dir(args.category, args.data_root) / "train.jsonl.gz")
    if len(records) < n_max:
        raise SirenError(f"the {args.category} train split has {len(records)} rows, fewer than {n_max}")

    parquet_dir = out_dir / "verl" / "max@10-long@False"
    parquet_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([make_row(r, category=args.category, split="train", index=i) for i, r in enumerate(records[:n_max])]
                 ).to_parquet(parquet_dir / "train.parquet", index=False)
    rows = load_split_rows(parquet_dir, "train")
    model_dir = build_model(out_dir, args.hidden_size, args.num_layers)

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    script = Path(__file__).resolve().parents[1] / "extract_last_hidden_ddp.py"
    runs = []
    for n in sorted(args.rows):
        thinking_dir = out_dir / f"thinking_{n}"
        results = [result_row(row, synthetic_reasoning(i, row["label"]), 0) for i, row in enumerate(rows[:n])]
        atomic_write_text(thinking_dir / "results.jsonl", "".join(json.dumps(r) + "\n" for r in results))
        hidden_dir = out_dir / f"hidden_{n}"
        peak_path = out_dir / f"peak_memory_{n}.json"
        command = [sys.executable, "-m", "siren.tools.peak_memory", "--report", str(peak_path), "--split_at_model_load",
                   "--", str(script), "--model", str(model_dir), "--data_path", str(parquet_dir),
                   "--thinking_path", str(thinking_dir), "--limit", str(n), "--output_dir", str(hidden_dir),
                   "--batch_size", str(args.batch_size), "--overwrite"]
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SirenError(f"extraction of {n} rows failed: {proc.stderr.strip().splitlines()[-1]}")
        manifest = json.loads((hidden_dir / "manifest.json").read_text())
        peaks = json.loads(peak_path.read_text())
        runs.append({
            "rows": n,
            "peak_rss_mb_loading": peaks["peak_rss_mb_model_loaded"],
            "peak_rss_mb_extracting": peaks["peak_rss_mb_after_model_load"],
            "rows_per_s": manifest["rows_per_s_per_process"],
            "wall_s": manifest["seconds"],
            "hidden_mb": round((hidden_dir / "teacher_hidden.npy").stat().st_size / 2**20, 2),
        })
        print(f"{n} rows: peak RSS {runs[-1]['peak_rss_mb_loading']:.1f} MB loading the model, "
              f"{runs[-1]['peak_rss_mb_extracting']} MB extracting, {runs[-1]['rows_per_s']:.2f} rows/s, "
              f"teacher_hidden.npy {runs[-1]['hidden_mb']} MiB")
    if runs[0]["peak_rss_mb_extracting"] is None:
        raise SirenError("this system cannot reset the peak-RSS counter (/proc/self/clear_refs), so the "
                         f"extraction's own peak is unknown; runs: {runs}")
    growth = runs[-1]["peak_rss_mb_extracting"] - runs[0]["peak_rss_mb_extracting"]
    report = {
        "model": {"hidden_size": args.hidden_size, "num_layers": args.num_layers,
                  "bytes_per_row": 4 * args.hidden_size * args.num_layers},
        "threads": args.threads, "batch_size": args.batch_size, "runs": runs,
        "peak_rss_growth_mb": round(growth, 1), "target_growth_mb": 50,
    }
    atomic_write_json(report_path, report)
    print(f"extraction peak RSS growth from {runs[0]['rows']} to {runs[-1]['rows']} rows: {growth:.1f} MB (target < 50 MB); "
          f"wrote {report_path}")


if __name__ == "__main__":
    sys.exit(run_main(main))
