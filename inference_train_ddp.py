"""Stage 4a: the GRPO model's chain-of-thought answers on a parquet split, with a correctness mask.

    accelerate launch --num_processes 1 inference_train_ddp.py --model ckpt/GRPO_Movies_step100 \
        --data_path data/Movies/verl/max@10-long@True --split train --out_dir results_train/Movies

Writes results.jsonl (one row per parquet row, in order), mask.pt (bool per row: well-formed
response with the exact rating), metrics.json and manifest.json to --out_dir. Any number of
processes (`accelerate launch --num_processes K`, on GPUs or, with --multi_gpu, on CPU over gloo)
gives the same files. Each process flushes its finished rows to <out_dir>/partial/ after every
batch; rerunning the same command after a crash skips them.
"""

import argparse
import sys

from siren.cli import run_main, str2bool


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="GRPO model directory (weights + tokenizer)")
    parser.add_argument("--data_path", required=True, help="verl parquet directory (max@N-long@bool)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"], help="parquet split (default: %(default)s)")
    parser.add_argument("--out_dir", default=None, help="output directory (default: results_{split}/{category})")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per generate call and per flush, per process (default: %(default)s)")
    parser.add_argument("--max_new_tokens", type=int, default=1024, help="generation length limit (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling, used when temperature > 0 (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed, used when temperature > 0 (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows of the split (default: all)")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="generation engine (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="model dtype; auto is bfloat16 on CUDA, float32 on CPU (default: %(default)s)")
    parser.add_argument("--resume", type=str2bool, default=True,
                        help="reuse finished rows in <out_dir>/partial from an interrupted run with the same settings (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace finished outputs in --out_dir")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import shutil
    import time
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from siren import SirenError
    from siren.cot import (
        STOP_AFTER_ENV,
        PartWriter,
        check_resume_settings,
        merge_parts,
        part_path,
        partial_dir,
        public_row,
        read_parts,
        response_summary,
        result_row,
        save_mask,
        settings_record,
        stop_after_batches,
    )
    from siren.distributed import process_state, shard_positions
    from siren.generation import HFGenerator, SamplingSettings, VLLMGenerator, batches, check_backend
    from siren.io import (
        RunTimer,
        atomic_write_json,
        atomic_write_jsonl,
        check_outputs_free,
        write_manifest,
    )
    from siren.metrics import latency_summary, rating_metrics
    from siren.modeling import device_name, load_causal_lm, resolve_dtype
    from siren.prompts import chat_prompt_text
    from siren.tokenization import load_tokenizer
    from siren.verl_data import category_of, load_split_rows, parquet_path

    timer = RunTimer()
    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p)
    settings.check()
    check_backend(args.backend)
    if args.batch_size < 1:
        raise SirenError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise SirenError(f"--limit must be at least 1, got {args.limit}")

    rows = load_split_rows(args.data_path, args.split, args.limit)
    category = category_of(rows)
    out_dir = Path(args.out_dir or f"results_{args.split}/{category}")
    outputs = [out_dir / "results.jsonl", out_dir / "mask.pt", out_dir / "metrics.json"]
    check_outputs_free(outputs, args.overwrite)
    tokenizer = load_tokenizer(args.model)

    state = process_state()
    rank, world, is_main = state.process_index, state.num_processes, state.is_main_process
    part_dir = partial_dir(out_dir)
    resume_key = settings_record(model=Path(args.model), data=parquet_path(args.data_path, args.split),
                                 backend=args.backend, dtype=args.dtype, seed=args.seed, sampling=settings)
    if not args.resume:
        if is_main and part_dir.exists():
            shutil.rmtree(part_dir)
        state.wait_for_everyone()
    resuming = check_resume_settings(part_dir, resume_key)
    # Every process has decided whether to resume before the main process writes the settings.
    state.wait_for_everyone()
    if is_main and not resuming:
        atomic_write_json(part_dir / "settings.json", resume_key)
    finished = read_parts(part_dir) if resuming else {}
    todo = [p for p in shard_positions(len(rows), rank, world) if p not in finished]
    # Nobody appends to a part file before everyone has read them all.
    state.wait_for_everyone()
    if is_main:
        print(f"{len(rows)} {args.split} rows, {world} process(es); "
              f"{len(finished)} already done in {part_dir}, {len(todo)} to generate on process 0")

    if args.backend == "vllm":
        generator = VLLMGenerator(args.model, args.dtype, settings, world, args.seed)
    else:
        torch.manual_seed(args.seed + rank)
        model = load_causal_lm(args.model, resolve_dtype(args.dtype, state.device.type), state.device)
        generator = HFGenerator(model, tokenizer, settings)

    writer = PartWriter(part_path(part_dir, rank))
    stop_after = stop_after_batches()
    for batch_number, positions in enumerate(tqdm(list(batches(todo, args.batch_size)), desc="generate",
                                                  disable=not is_main), start=1):
        prompts = [chat_prompt_text(tokenizer, rows[p]["prompt"]) for p in positions]
        start = time.perf_counter()
        responses = generator.generate(prompts)
        seconds = (time.perf_counter() - start) / len(positions)
        writer.write({**result_row(rows[p], text, n_tokens), "_seconds": seconds}
                     for p, (text, n_tokens) in zip(positions, responses, strict=True))
        if stop_after is not None and batch_number >= stop_after:
            writer.close()
            raise SystemExit(f"stopped after {batch_number} batch(es) ({STOP_AFTER_ENV} is set)")
    writer.close()
    state.wait_for_everyone()

    if is_main:
        merged = merge_parts(part_dir, len(rows))
        results = [public_row(r) for r in merged]
        atomic_write_jsonl(outputs[0], results)
        save_mask(outputs[1], [r["correct"] for r in results])
        summary = response_summary(results)
        metrics = {
            "predictions": {"cot": rating_metrics([r["prediction"] for r in results], [r["label"] for r in results])},
            "responses": summary,
            "latency": latency_summary([r["_seconds"] for r in merged], [r["generated_tokens"] for r in results],
                                       device_name(state.device)),
        }
        atomic_write_json(outputs[2], metrics)
        write_manifest(out_dir, script="inference_train_ddp.py", args=args,
                       inputs=[parquet_path(args.data_path, args.split), args.model], outputs=outputs,
                       counts={**summary, "processes": world, "resumed_rows": len(finished)},
                       seconds=timer.seconds, extra={"category": category})
        shutil.rmtree(part_dir)
        cot = metrics["predictions"]["cot"]
        mae = "n/a" if cot["mae"] is None else f"{cot['mae']:.4f}"
        print(f"read {len(rows)} rows of {parquet_path(args.data_path, args.split)}; "
              f"{summary['valid']} valid, {cot['n_invalid']} invalid, {summary['format_ok']} well formed, "
              f"{summary['correct']} correct (mask); MAE on valid {mae}; "
              f"{metrics['latency']['generated_tokens_per_sample']:.1f} tokens/sample")
        print(f"wrote {', '.join(str(p) for p in outputs)} and manifest.json in {timer.seconds:.1f}s")
    state.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(run_main(main))
