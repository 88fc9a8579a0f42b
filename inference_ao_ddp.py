"""Stage 6: answer-only (AO) inference. The model reads prompt + empty think + `<answer>` and the
next token is the rating: one forward pass per sample instead of a ~240-token chain of thought.

    python inference_ao_ddp.py --model ckpt/AO_Movies_HA/merged \
        --data_path data/Movies/hidden/max@10-long@True --split test

Several processes (one per GPU; on CPU, gloo) split the rows and gather them back in order:

    accelerate launch --multi_gpu --num_processes 2 inference_ao_ddp.py --model ... --data_path ...

Writes `<out_dir>/predictions.jsonl`, `metrics.json` (rows "ao": the decoded rating, "ao_expected":
sum_r p(r) * r over the tokens "1".."5"; latency timed after a warm-up batch) and `manifest.json`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from siren.cli import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", required=True, help="a merged model directory (train_hidden_mask.py's merged/), or the base with --adapter")
    add("--adapter", default=None, help="a LoRA adapter directory (train_hidden_mask.py's adapter/) to merge into --model")
    add("--data_path", required=True, help="the stage 4c DatasetDict, or a verl parquet directory (stage 2)")
    add("--split", default="test", help="test, valid (val) or train (default: %(default)s)")
    add("--out_dir", default=None, help="output directory (default: results_ao/<model>/<split>-<decode>, "
        "where <model> is the model directory's name, or its parent's for .../merged)")
    add("--batch_size", type=int, default=16, help="rows per forward pass and process (default: %(default)s)")
    add("--decode", choices=("constrained", "greedy"), default="constrained",
        help="constrained: argmax over the rating tokens 1..5, never invalid; greedy: argmax over the whole "
             "vocabulary, parsed, invalid outputs counted (default: %(default)s)")
    add("--invalid_fill", type=float, default=5.0,
        help="greedy only: the rating scored for invalid outputs, for comparability with the authors; "
             "the invalid count is always reported (default: %(default)s)")
    add("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
        help="auto = bf16 on a GPU that supports it, else float32 (default: %(default)s)")
    add("--max_samples", type=int, default=None, help="only the first N rows of the split (default: all)")
    add("--overwrite", action="store_true", help="replace finished outputs in --out_dir")
    return parser


def main() -> None:
    args = build_parser().parse_args()

    from siren import SirenError
    from siren.answer import RATING_MAX, RATING_MIN
    from siren.ao import default_out_dir
    from siren.ao_data import check_data_path
    from siren.io import RunTimer, check_outputs_free

    timer = RunTimer()
    if args.batch_size < 1:
        raise SirenError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.max_samples is not None and args.max_samples < 1:
        raise SirenError(f"--max_samples must be at least 1, got {args.max_samples}")
    if not RATING_MIN <= args.invalid_fill <= RATING_MAX:
        raise SirenError(f"--invalid_fill must be a rating in [{RATING_MIN}, {RATING_MAX}], got {args.invalid_fill}")
    out_dir = Path(args.out_dir) if args.out_dir else default_out_dir(args.model, args.adapter, args.split, args.decode)
    args.out_dir = str(out_dir)
    outputs = [out_dir / "predictions.jsonl", out_dir / "metrics.json", out_dir / "manifest.json"]
    # Every process checks, so a refusal stops them all before any of them waits on the others.
    check_outputs_free(outputs, args.overwrite)
    check_data_path(args.data_path, args.split)  # before the heavy imports, so a typo fails at once

    import time

    import torch
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    from siren.ao import load_ao_model, next_token_logits, parse_greedy_token, prediction_metrics
    from siren.ao_data import load_ao_rows
    from siren.distributed import process_state, shard_positions
    from siren.io import atomic_write_json, atomic_write_jsonl, write_manifest
    from siren.metrics import latency_summary
    from siren.modeling import constrained_ratings, device_name, expected_ratings, rating_probabilities, resolve_dtype
    from siren.tokenization import load_tokenizer, rating_token_ids

    state = process_state()
    tokenizer = load_tokenizer(args.model, padding_side="left")
    ratings = rating_token_ids(tokenizer)
    rows = load_ao_rows(args.data_path, args.split, tokenizer, limit=args.max_samples)
    model = load_ao_model(args.model, args.adapter, resolve_dtype(args.dtype, state.device.type), state.device)

    positions = shard_positions(len(rows), state.process_index, state.num_processes)
    batches = [positions[i:i + args.batch_size] for i in range(0, len(positions), args.batch_size)]

    def run_batch(batch: list[int]) -> list[dict]:
        logits = next_token_logits(model, tokenizer, [rows[p]["prompt"] for p in batch], state.device)
        probs = rating_probabilities(logits, ratings)
        expected = expected_ratings(probs, sorted(ratings)).tolist()
        if args.decode == "constrained":
            predictions = constrained_ratings(probs, sorted(ratings)).tolist()
            texts = [None] * len(batch)
        else:
            texts = tokenizer.batch_decode(logits.argmax(-1)[:, None], skip_special_tokens=False)
            predictions = [parse_greedy_token(text) for text in texts]
        results = []
        for p, prediction, expectation, row_probs, text in zip(batch, predictions, expected, probs.tolist(), texts, strict=True):
            row = rows[p]
            result = {
                "position": p, "index": row["index"], "user_id": row["user_id"], "parent_asin": row["parent_asin"],
                "label": row["label"], "prediction": prediction, "expected_rating": expectation,
                "probs": {str(r): prob for r, prob in zip(sorted(ratings), row_probs, strict=True)},
                "valid": prediction is not None,
            }
            if args.decode == "greedy":
                result["generated_text"] = text
            results.append(result)
        return results

    def synchronize() -> None:
        if state.device.type == "cuda":
            torch.cuda.synchronize(state.device)

    if batches:  # warm-up (kernel selection, allocator); its results are recomputed in the timed loop
        run_batch(batches[0])
    synchronize()
    state.wait_for_everyone()
    start = time.perf_counter()
    local_results = []
    for batch in tqdm(batches, desc=f"AO {args.decode} (rank {state.process_index})",
                      disable=not state.is_local_main_process):
        batch_start = time.perf_counter()
        results = run_batch(batch)
        synchronize()
        for result in results:  # a batch's time is shared by its rows
            result["seconds"] = (time.perf_counter() - batch_start) / len(batch)
        local_results.extend(results)
    local_seconds = time.perf_counter() - start

    all_results = gather_object(local_results) if state.num_processes > 1 else local_results
    all_seconds = gather_object([local_seconds]) if state.num_processes > 1 else [local_seconds]
    if not state.is_main_process:
        return
    all_results = sorted(all_results, key=lambda r: r.pop("position"))
    if len(all_results) != len(rows):
        raise SirenError(f"internal error: gathered {len(all_results)} results for {len(rows)} rows")

    labels = [r["label"] for r in all_results]
    row_seconds = [r.pop("seconds") for r in all_results]
    n = len(all_results)
    metrics = {
        "predictions": prediction_metrics(
            [r["prediction"] for r in all_results], [r["expected_rating"] for r in all_results], labels,
            invalid_fill=args.invalid_fill if args.decode == "greedy" else None,
        ),
        "decode": args.decode,
        # Per process, as stage 4a reports it: ms_per_sample = batch time / batch size, timed after a
        # warm-up batch; with K processes the whole split takes about wall_seconds.
        "latency": {
            **latency_summary(row_seconds, [1] * n, device_name(state.device)),
            "num_processes": state.num_processes,
            "batch_size": args.batch_size,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            "wall_seconds": max(all_seconds),
        },
    }
    atomic_write_jsonl(out_dir / "predictions.jsonl", all_results)
    atomic_write_json(out_dir / "metrics.json", metrics)
    ao = metrics["predictions"]["ao"]
    write_manifest(
        out_dir, script="inference_ao_ddp.py", args=args,
        inputs=[p for p in (args.model, args.adapter, args.data_path) if p],
        outputs=outputs[:2], counts={"rows": n, "invalid": ao["n_invalid"], "processes": state.num_processes},
        seconds=timer.seconds,
    )
    expected_row = metrics["predictions"]["ao_expected"]
    print(
        f"read {n} {args.split} rows from {args.data_path}; {args.decode} AO: MAE {ao['mae']:.4f} RMSE {ao['rmse']:.4f} "
        f"acc {ao['acc']:.4f} invalid {ao['n_invalid']}; expected rating: MAE {expected_row['mae']:.4f} "
        f"RMSE {expected_row['rmse']:.4f}; {metrics['latency']['samples_per_s']:.1f} samples/s on "
        f"{state.num_processes} x {metrics['latency']['device']}; wrote {out_dir}/predictions.jsonl, metrics.json, "
        f"manifest.json in {timer.seconds:.1f}s"
    )


if __name__ == "__main__":
    sys.exit(run_main(main))
