r"""How close stage 6 runs to the CPU's limit: its achieved GFLOP/s against torch.matmul's on the
same shapes, in one run.

    python scripts/bench_ao_flops.py --model ckpt/smollm2-135m-instruct \
        --data_path results/demo-real/ao_data --limit 96 --batch_sizes 1 4 16 --dtype float32 bfloat16

For each dtype, layout and batch size it runs stage 6's own code path (siren.answer_only: rows sorted
by prompt length, cut into batches, the eager engine's forward, warm-up batch untimed) and counts the
useful flops of the rows it scored (siren.tools.flops: linear layers and causal attention over real
tokens, padding excluded). The layouts are the eager engine's two: `packed` (its default: a batch's
prompts end to end in one row, siren.packed_attention) and `padded` (left-padded to the longest
prompt). Right after, it times torch.matmul over the model's linear-layer shapes with as many rows
per matmul as the forward had (the batch's computed tokens, on average), same dtype and threads, for
`--matmul_seconds` in all (8 by default: a quarter of a second per shape varied by 15%): the
ceiling. Writes <output_dir>/flops.json and prints the table (achieved / ceiling = efficiency).

With --breakdown it scores the rows once more under torch.profiler and splits the timed seconds by
the operators' shares of self time: the linear layers (aten::mm), attention (the scaled-dot-product
kernel) and the rest (norms, rotary embeddings, activations, copies), each with its GFLOP/s, and
the efficiency stage 6 would reach if its linear layers ran at the ceiling and the rest kept its
time (siren.tools.flops.time_breakdown): what faster matrix multiplies alone could give.
"""

import argparse
import sys

from siren import cli
from siren.cli import positive_int, run_main
from siren.tools import bench_run


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_model(parser, "model folder (weights + tokenizer)")
    cli.add_data_path(parser, "stage 4c DatasetDict or a verl parquet folder")
    cli.add_split(parser)
    cli.add_limit(parser, help="rows scored per measurement (the first N of the split)")
    parser.set_defaults(limit=96)
    parser.add_argument("--batch_sizes", nargs="+", type=positive_int, default=[1, 4, 16], help="stage-6 batch sizes")
    parser.add_argument("--matmul_seconds", type=float, default=8.0,
                        help="seconds the torch.matmul ceiling is timed for, over all shapes (a short window is noisy)")
    parser.add_argument("--layouts", nargs="+", choices=("packed", "padded"), default=["packed", "padded"],
                        help="the eager engine's batch layouts to measure (packed: its default)")
    parser.add_argument("--breakdown", action="store_true",
                        help="after each measurement, score the rows once more under torch.profiler and report where "
                             "the time went (linear layers, attention, the rest), each kind's GFLOP/s, and the "
                             "efficiency if the linear layers ran at the ceiling")
    bench_run.add_flags(parser, "flops.json", "results/bench_ao_flops")
    return parser.parse_args(argv)


def profiled_self_seconds(engine, rows, batches) -> dict[str, float]:
    """Each operator's self CPU seconds over one more pass of `batches` under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            engine.score([rows[p]["prompt"] for p in batch])
    return {event.key: event.self_cpu_time_total / 1e6 for event in prof.key_averages()}


def measure(args) -> dict:
    """Every dtype x batch size of the flags: rows/s, achieved and matmul GFLOP/s; flops.json's content."""
    import torch

    from siren.answer_only import ao_batches, predict
    from siren.answer_only_data import load_ao_rows
    from siren.answer_only_engines import EagerAO
    from siren.modeling import load_causal_lm
    from siren.tokenization import load_tokenizer, rating_token_ids
    from siren.tools.flops import forward_shape, matmul_rate, time_breakdown, useful_flops

    tokenizer = load_tokenizer(args.model, padding_side="left")
    rows = load_ao_rows(args.data_path, args.split, tokenizer, limit=args.limit)
    lengths = [len(ids) for ids in tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]]
    results = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        model = load_causal_lm(args.model, dtype, "cpu")
        shape = forward_shape(model)
        for layout, batch_size in [(layout, b) for layout in args.layouts for b in args.batch_sizes]:
            engine = EagerAO(model, tokenizer, rating_token_ids(tokenizer), packed=layout == "packed")
            batches = ao_batches(tokenizer, rows, batch_size, 0, 1)
            _, seconds, warmup = predict(engine, tokenizer, rows, batches, decode="constrained", device="cpu",
                                         show_progress=False)
            # predict's timed loop scores every batch once (its warm-up batch is run before, untimed)
            flops = useful_flops(shape, [lengths[p] for batch in batches for p in batch])
            # the tokens each row is computed over: its own when packed, the batch's longest when padded
            computed_tokens = [max(lengths[p] for p in batch) if layout == "padded" else lengths[p]
                               for batch in batches for p in batch]
            computed = sum(computed_tokens)
            matmul = matmul_rate(shape.linear_shapes, rows=max(1, round(computed / len(batches))), dtype=dtype,
                                 seconds=args.matmul_seconds)
            achieved = flops / seconds / 1e9
            breakdown = None
            if args.breakdown:
                breakdown = time_breakdown(
                    profiled_self_seconds(engine, rows, batches), seconds,
                    linear_flops=sum(shape.linear_flops(tokens) for tokens in computed_tokens),
                    attention_flops=sum(shape.attention_flops(lengths[p]) for batch in batches for p in batch),
                    useful=flops, ceiling_gflops=matmul["gflops"])
            results.append({
                "dtype": dtype_name, "layout": layout, "batch_size": batch_size, "rows": len(rows),
                "threads": torch.get_num_threads(), "seconds": round(seconds, 3), "warmup_seconds": round(warmup, 3),
                "rows_per_s": round(len(rows) / seconds, 3), "useful_gflop": round(flops / 1e9, 1),
                "padding_share": round(1 - sum(lengths) / computed, 4), "achieved_gflops": round(achieved, 2),
                "matmul": matmul, "efficiency": round(achieved / matmul["gflops"], 3),
            })
            row = results[-1]
            print(f"{dtype_name:>8} {layout:>6} batch {batch_size:>3}: {row['rows_per_s']:.2f} rows/s, "
                  f"{row['achieved_gflops']:.1f} GFLOP/s achieved vs {matmul['gflops']:.1f} GFLOP/s matmul at "
                  f"{matmul['rows']} rows = {row['efficiency']:.0%} (padding {row['padding_share']:.1%})", flush=True)
            if breakdown is not None:
                row["breakdown"] = breakdown
                shares = breakdown["shares"]
                print(f"{'':>17} time: linear {shares['linear']:.0%} at {breakdown['linear_gflops']} GFLOP/s, "
                      f"attention {shares['attention']:.0%} at {breakdown['attention_gflops']} GFLOP/s, "
                      f"other {shares['other']:.0%}; with the linear layers at the ceiling: "
                      f"{breakdown['efficiency_if_linear_at_ceiling']:.0%}", flush=True)
        del model
    summary = {"model": args.model, "mean_prompt_tokens": round(sum(lengths) / len(lengths), 1),
               "flops_per_row_mean_gflop": round(useful_flops(shape, lengths) / len(lengths) / 1e9, 2),
               "results": results}
    return summary


def main(argv=None) -> None:
    bench_run.run(parse_args(argv), "scripts/bench_ao_flops.py", "flops.json", measure,
                  counts=lambda report: {"measurements": len(report["results"])})


if __name__ == "__main__":
    sys.exit(run_main(main))
