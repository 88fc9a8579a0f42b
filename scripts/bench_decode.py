r"""What one decode step of stage 4a's HF backend costs, with transformers' `sdpa` attention and with
siren.decode_attention (grouped-query attention without repeating the KV cache), in one run.

    python scripts/bench_decode.py --model ckpt/smollm2-135m-instruct \
        --data_path results/demo-real/verl/max@10-long@True --batch_size 32 --dtype bfloat16 float32

It takes the first --batch_size prompts of the split, renders them as 4a does (chat template,
left padding), and for each dtype and attention times `generate` with 1 and with 1 + --steps new
tokens (greedy, the KV cache on, every row forced to the full length). The difference divided by
--steps is the cost of one decode step; the first is the prompt's forward. The two attentions'
tokens are compared (they agree in float32; in bfloat16 a near tie may break the other way).
Each measurement is repeated --repeats times and the fastest kept. Writes
<output_dir>/decode.json and prints the table.
"""

import argparse
import sys

from siren import cli
from siren.cli import positive_int, run_main
from siren.tools import bench_run


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_model(parser, "model folder (weights + tokenizer)")
    cli.add_data_path(parser, "a verl parquet folder (stage 2)")
    cli.add_split(parser)
    parser.add_argument("--batch_size", type=positive_int, default=32, help="prompts per generate call (4a's batch)")
    parser.add_argument("--steps", type=positive_int, default=16, help="decode steps timed")
    parser.add_argument("--repeats", type=positive_int, default=2, help="runs per measurement; the fastest is kept")
    bench_run.add_flags(parser, "decode.json", "results/bench_decode")
    return parser.parse_args(argv)


def measure(args) -> dict:
    import time

    import torch

    from siren import decode_attention
    from siren.modeling import load_causal_lm, resolve_dtype
    from siren.prompts import chat_prompt_text
    from siren.tokenization import load_tokenizer
    from siren.verl_data import load_split_rows

    rows = load_split_rows(args.data_path, args.split, limit=args.batch_size)
    tokenizer = load_tokenizer(args.model)
    encoded = tokenizer([chat_prompt_text(tokenizer, row["prompt"]) for row in rows], return_tensors="pt",
                        padding=True, add_special_tokens=False)
    lengths = encoded["attention_mask"].sum(dim=1)
    results = []
    for dtype_name in args.dtypes:
        tokens = {}
        for attention in ("sdpa", decode_attention.register()):
            model = load_causal_lm(args.model, resolve_dtype(dtype_name, "cpu"), torch.device("cpu"),
                                   attn_implementation=attention)
            seconds = {}
            for new in (1, 1 + args.steps):
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    with torch.inference_mode():
                        out = model.generate(**encoded, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                             use_cache=True, pad_token_id=tokenizer.pad_token_id)
                    times.append(time.perf_counter() - start)
                seconds[new] = min(times)
            tokens[attention] = out
            step = (seconds[1 + args.steps] - seconds[1]) / args.steps
            results.append({"dtype": dtype_name, "attention": attention, "prompt_forward_s": round(seconds[1], 3),
                            "decode_step_s": round(step, 4)})
            print(f"{dtype_name:9s} {attention:17s} prompt forward {seconds[1]:7.2f} s   decode step {step:.3f} s",
                  flush=True)
        same = torch.equal(*tokens.values())
        results[-1]["same_tokens_as_sdpa"] = results[-2]["same_tokens_as_sdpa"] = same
        print(f"{dtype_name}: same tokens with both attentions: {same}")
    return {"model": str(args.model), "batch_size": len(rows), "padded_length": int(encoded["input_ids"].shape[1]),
            "mean_prompt_tokens": round(float(lengths.float().mean()), 1), "steps": args.steps,
            "threads": torch.get_num_threads(), "results": results}


def main(argv=None) -> None:
    bench_run.run(parse_args(argv), "scripts/bench_decode.py", "decode.json", measure,
                  counts=lambda report: {"measurements": len(report["results"])})


if __name__ == "__main__":
    sys.exit(run_main(main))
