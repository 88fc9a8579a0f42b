r"""Helpers of `scripts/gpu_check.sh`: run and measure one step, write the inputs a random model
cannot produce, and print the summary.

    python -m siren.tools.gpu_check run --summary OUT/summary.json --name 4a --rows 64 --log OUT/logs/4a.log -- CMD ...
    python -m siren.tools.gpu_check skip --summary OUT/summary.json --name verl --reason "verl is not installed"
    python -m siren.tools.gpu_check random-model --shape qwen3-4b --tokenizer ckpt/tiny-qwen3 --output_dir ckpt/random-qwen3-4b
    python -m siren.tools.gpu_check synthetic-cot --model M --data_path VERL --split train --limit 1000 --output_dir DIR
    python -m siren.tools.gpu_check table --summary OUT/summary.json

`run` starts the command, samples the GPU's used memory with nvidia-smi every 0.2 s while it runs,
and appends one entry to the summary: wall seconds, peak GPU memory above what was in use when the
step started, rows (or steps) per second, exit status and the card's name. A failed step is
recorded and the script goes on, so one run shows every step's outcome.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from siren import SirenError, cli
from siren.cli import positive_int, run_main


def gpu_memory_used_mib() -> list[int] | None:
    """Used memory of every GPU in MiB, from nvidia-smi; None where it is not available."""
    return _query_gpus("memory.used")


def gpu_memory_total_mib() -> list[int] | None:
    """Total memory of every GPU in MiB, from nvidia-smi; None where it is not available."""
    return _query_gpus("memory.total")


def _query_gpus(field: str) -> list[int] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    try:
        return [int(value) for value in out.stdout.split()]
    except ValueError:
        return None


def gpu_name() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=10)
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


class MemorySampler:
    """Peak of the summed used GPU memory while a step runs, sampled in a background thread."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.baseline = self.peak = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            used = gpu_memory_used_mib()
            if used is not None:
                self.peak = max(self.peak or 0, sum(used))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        used = gpu_memory_used_mib()
        self.baseline = None if used is None else sum(used)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_above_baseline_mib(self) -> int | None:
        if self.baseline is None or self.peak is None:
            return None
        return max(0, self.peak - self.baseline)


def read_summary(path: Path) -> dict:
    from siren.io import read_json

    if not path.exists():
        return {"card": gpu_name(), "steps": []}
    summary = read_json(path)
    if not isinstance(summary, dict) or not isinstance(summary.get("steps"), list):
        raise SirenError(f"{path} is not a gpu_check summary (no 'steps' list)")
    return summary


def add_entry(path: Path, entry: dict) -> None:
    from siren.io import atomic_write_json

    summary = read_summary(path)
    summary["steps"] = [s for s in summary["steps"] if s.get("name") != entry["name"]] + [entry]
    atomic_write_json(path, summary)


def run_step(name: str, command: list[str], summary: Path, log: Path | None = None, rows: int | None = None,
             steps: int | None = None) -> int:
    """Run `command`, measure it, record it; returns its exit status."""
    if not command:
        raise SirenError("run: give the step's command after --")
    print(f"[gpu_check] {name}: {' '.join(command)}", flush=True)
    handle = open(log, "w", encoding="utf-8") if log else None  # noqa: SIM115 - closed below
    estimate = None
    try:
        with MemorySampler() as memory:
            start = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in process.stdout:
                sys.stdout.write(line)
                if handle:
                    handle.write(line)
                if "memory estimate" in line:  # stage 3 prints what it expects; kept beside the measured peak
                    estimate = line.strip()
            status = process.wait()
            seconds = time.perf_counter() - start
    finally:
        if handle:
            handle.close()
    entry = {
        "name": name, "status": "ok" if status == 0 else f"failed (exit {status})", "seconds": round(seconds, 2),
        "peak_gpu_mib": memory.peak_above_baseline_mib, "rows": rows, "rows_per_s": round(rows / seconds, 3) if rows else None,
        "steps": steps, "steps_per_s": round(steps / seconds, 3) if steps else None,
        "log": str(log) if log else None, "command": " ".join(command), "estimate": estimate,
    }
    add_entry(summary, entry)
    print(f"[gpu_check] {name}: {entry['status']} in {seconds:.1f}s"
          + (f", peak {entry['peak_gpu_mib']} MiB" if entry["peak_gpu_mib"] is not None else ""), flush=True)
    return status


def save_random_model(shape: str, tokenizer_path: str, output_dir: Path, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """A randomly initialised model of a real shape (`siren.tools.latency.RANDOM_INIT_SHAPES`) with the
    tokenizer of `tokenizer_path`, saved once: stages and vLLM then load it like a real checkpoint."""
    import torch

    from siren.io import atomic_path
    from siren.tokenization import load_tokenizer, save_tokenizer
    from siren.tools.latency import build_random_model

    if (output_dir / "config.json").is_file():
        print(f"{output_dir} already holds a model; kept")
        return output_dir
    tokenizer = load_tokenizer(tokenizer_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_random_model(shape, tokenizer, device, getattr(torch, dtype), seed)
    with atomic_path(output_dir) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(tokenizer, tmp)
    print(f"wrote a random-init {shape} ({sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, {dtype}) "
          f"to {output_dir}")
    return output_dir


SYNTHETIC_REASONING = "<think>\nThe user's recent ratings and the candidate's topics point to this rating.\n</think>"


def write_synthetic_cot(model: str, data_path: str, split: str, limit: int | None, output_dir: Path) -> Path:
    """A stage-4a folder (results.jsonl, mask.pt, metrics.json, manifest.json) whose responses are a
    fixed reasoning and the row's own label: what stage 4b needs as input, which a random model
    cannot write. Every row is well formed and correct. Its manifest says it is synthetic."""
    from siren.cot_results import MASK_NAME, RESULTS_NAME, SYNTHETIC_WRITER, result_row, save_mask
    from siren.io import atomic_outputs, atomic_write_json, atomic_write_jsonl, write_manifest
    from siren.modeling import model_record
    from siren.verl_data import load_split_rows, parquet_path

    rows = load_split_rows(data_path, split, limit=limit)
    results = [result_row(row, f"{SYNTHETIC_REASONING}\n<answer>{row['label']:.1f}</answer>", 0) for row in rows]
    names = [RESULTS_NAME, MASK_NAME, "metrics.json", "manifest.json"]
    with atomic_outputs(output_dir, names, overwrite=True) as staged:
        atomic_write_jsonl(staged.path(RESULTS_NAME), results)
        save_mask(staged.path(MASK_NAME), [r["correct"] for r in results])
        atomic_write_json(staged.path("metrics.json"), {"synthetic": True, "rows": len(results)})
        write_manifest(staged.dir, script=SYNTHETIC_WRITER, args={"data_path": data_path, "split": split,
                       "limit": limit}, inputs=[parquet_path(data_path, split)], outputs=names[:3],
                       counts={"rows": len(results), "correct": sum(r["correct"] for r in results)},
                       extra={"synthetic": "fixed reasoning + the row's own label, not model output",
                              "model": model_record(model)})
    print(f"wrote {len(results)} synthetic stage-4a rows (fixed reasoning, correct answers) to {output_dir}")
    return output_dir


def format_table(summary: dict) -> str:
    lines = [f"GPU check on {summary.get('card') or 'an unknown card'}",
             f"{'step':<28} {'status':<18} {'seconds':>8} {'peak GPU MiB':>12} {'rows/s':>9} {'steps/s':>8}"]
    for step in summary["steps"]:
        if step["status"].startswith("skipped"):
            lines.append(f"{step['name']:<28} {step['status']}")
            continue
        cells = ["-" if step.get(key) is None else step[key] for key in ("seconds", "peak_gpu_mib", "rows_per_s", "steps_per_s")]
        lines.append(f"{step['name']:<28} {step['status'][:18]:<18} {cells[0]:>8} {cells[1]:>12} {cells[2]:>9} {cells[3]:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = cli.stage_parser(__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    run = verbs.add_parser("run", help="run and measure one step")
    run.add_argument("--summary", required=True, help="the summary JSON to append to")
    run.add_argument("--name", required=True, help="step name")
    run.add_argument("--log", default=None, help="also write the step's output here")
    run.add_argument("--rows", type=positive_int, default=None, help="rows the step processes (gives rows/s)")
    run.add_argument("--steps", type=positive_int, default=None, help="optimizer steps the step runs (gives steps/s)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    skip = verbs.add_parser("skip", help="record a skipped step and why")
    skip.add_argument("--summary", required=True)
    skip.add_argument("--name", required=True)
    skip.add_argument("--reason", required=True)
    table = verbs.add_parser("table", help="print the summary as a table")
    table.add_argument("--summary", required=True)
    random_model = verbs.add_parser("random-model", help="save a random-init model of a real shape, once")
    random_model.add_argument("--shape", default="qwen3-4b")
    random_model.add_argument("--tokenizer", required=True)
    cli.add_output_dir(random_model, "the model folder", required=True)
    random_model.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    cot = verbs.add_parser("synthetic-cot", help="a stage-4a folder with fixed reasoning and correct answers")
    cli.add_model(cot, "the model stage 4b will run (recorded in the manifest)")
    cli.add_data_path(cot, "verl parquet folder")
    cli.add_split(cot, default="train")
    cli.add_limit(cot)
    cli.add_output_dir(cot, "the stage-4a folder to write", required=True)
    args = parser.parse_args(argv)

    if args.verb == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        status = run_step(args.name, command, Path(args.summary), Path(args.log) if args.log else None,
                          args.rows, args.steps)
        sys.exit(0 if status == 0 else 1)
    if args.verb == "skip":
        add_entry(Path(args.summary), {"name": args.name, "status": f"skipped: {args.reason}"})
        print(f"[gpu_check] {args.name}: skipped ({args.reason})")
    elif args.verb == "table":
        print(format_table(read_summary(Path(args.summary))))
    elif args.verb == "random-model":
        save_random_model(args.shape, args.tokenizer, Path(args.output_dir), args.dtype)
    elif args.verb == "synthetic-cot":
        write_synthetic_cot(args.model, args.data_path, args.split, args.limit, Path(args.output_dir))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(run_main(main))
