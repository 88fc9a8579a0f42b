r"""Latency of answer-only (AO) against chain-of-thought (CoT) decoding on the same model and prompts.

    python scripts/bench_latency.py --model ckpt/tiny-qwen3 --category Movies --limit 4 --warmup 1 \
        --cot_tokens 16 --output_dir results/bench_latency

Times AO through each engine of --ao_engines (eager, compiled, vllm) at each batch size of
--ao_batch_sizes, and CoT one sample at a time with each cache of --cot_caches (dynamic, static).
Warm-up (compilation, CUDA-graph capture, first calls) runs first and is reported apart, never
inside the timed figures. Writes <output_dir>/latency.json: every timed row with its decoding,
engine, batch size, device and dtype; the CoT/AO speedups of rows measured the same way (same
batch size, device, dtype); and the headline: the fastest CoT row against the fastest
batch-1 AO row. `--cot_tokens 238` (the default) forces every CoT to the paper's average length.

On a GPU, `--random_init qwen3-4b` benchmarks a randomly initialised model of Qwen3-4B's real shape
in bf16 (the tokenizer comes from --model or --tokenizer), and the engine and cache defaults add
`compiled` and `static`; `vllm` needs the weights on disk (--model, not --random_init). The
command above takes about a minute on 2 CPU cores.
"""

import argparse
import sys

from siren import cli
from siren.cli import nonnegative_int, positive_int, run_main


def parse_args() -> argparse.Namespace:
    from siren.answer_only_engines import DEFAULT_BUCKETS, ENGINES
    from siren.tools.latency import COT_CACHES, RANDOM_INIT_SHAPES

    parser = cli.stage_parser(__doc__)
    cli.add_model(parser, "model folder (weights + tokenizer)", required=False, aliases=(), default="ckpt/tiny-qwen3")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder; unset: --model")
    parser.add_argument("--random_init", choices=sorted(RANDOM_INIT_SHAPES), default=None,
                        help="benchmark a random model of this real shape instead of --model's weights (CUDA only)")
    cli.add_data_path(parser, "verl parquet folder to take prompts from; unset: build them from the split files",
                      required=False)
    cli.add_category(parser)
    cli.add_data_root(parser)
    cli.add_split(parser, help="split the prompts come from")
    parser.add_argument("--max_history", type=nonnegative_int, default=10,
                        help="recent interactions per prompt when building from split files")
    cli.add_limit(parser, help="timed prompts (the first N of the split)", aliases=("--num_samples",))
    parser.set_defaults(limit=16)
    parser.add_argument("--warmup", type=nonnegative_int, default=2,
                        help="untimed warm-up samples (CoT) or batches (AO) after each engine's own warm-up")
    parser.add_argument("--ao_engines", nargs="+", choices=ENGINES, default=None,
                        help="AO engines to time; unset: eager and compiled on CUDA (and vllm when importable and "
                             "--model holds the weights), eager on a CPU")
    parser.add_argument("--ao_batch_sizes", nargs="+", type=positive_int, default=[1],
                        help="AO batch sizes; 1 is the paper's per-sample figure, larger ones give throughput")
    parser.add_argument("--cot_caches", nargs="+", choices=COT_CACHES, default=None,
                        help="CoT KV caches to time; unset: dynamic and static on CUDA, dynamic on a CPU")
    parser.add_argument("--cot_tokens", type=nonnegative_int, default=238,
                        help="force exactly this many CoT tokens (EOS blocked); 0 lets CoT stop at EOS")
    parser.add_argument("--max_new_tokens", type=positive_int, default=1024, help="CoT length cap when --cot_tokens is 0")
    parser.add_argument("--pad_to_multiple_of", type=positive_int, default=64,
                        help="static-cache CoT: left-pad prompts to a multiple of this, so few shapes are compiled")
    parser.add_argument("--buckets", nargs="+", type=positive_int, default=list(DEFAULT_BUCKETS),
                        help="compiled AO engine: prompt length buckets in tokens")
    parser.add_argument("--compile_backend", default="inductor",
                        help="compiled AO engine: torch.compile backend (aot_eager compiles in seconds on a CPU)")
    parser.add_argument("--vllm_gpu_memory_utilization", type=float, default=0.4,
                        help="vllm AO engine: share of GPU memory for vLLM (the HF model stays loaded beside it)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    cli.add_dtype(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init")
    cli.add_output_dir(parser, "where latency.json goes", default="results/bench_latency")
    cli.add_overwrite(parser)
    return parser.parse_args()


def load_messages(args) -> tuple[list[list[dict]], list]:
    """The chat prompts of the first --limit rows and the files they came from."""
    from pathlib import Path

    from siren.data import load_split, resolve_category_dir, split_path
    from siren.prompts import build_messages
    from siren.verl_data import load_split_rows, parquet_path

    if args.data_path:
        rows = load_split_rows(args.data_path, args.split, limit=args.limit)
        return [row["prompt"] for row in rows], [parquet_path(args.data_path, args.split)]
    path = split_path(resolve_category_dir(args.category, args.data_root), args.split)
    records = load_split(path)[: args.limit]
    messages = [build_messages(args.category, r["history"], r["target"], "", args.max_history) for r in records]
    return messages, [Path(path)]


def validate(args: argparse.Namespace):
    """Flags and the output folder, before anything loads; returns the StageOutputs."""
    from pathlib import Path

    from siren import SirenError
    from siren.outputs import StageOutputs

    if not args.random_init and not (Path(args.model) / "config.json").is_file():
        raise SirenError(f"{args.model} holds no model (no config.json); build one with scripts/make_tiny_model.py")
    if not 0 < args.vllm_gpu_memory_utilization <= 1:
        raise SirenError(f"--vllm_gpu_memory_utilization must be in (0, 1], got {args.vllm_gpu_memory_utilization}")
    inputs = [None if args.random_init else args.model, args.tokenizer, args.data_path]
    return StageOutputs(args.output_dir, ["latency.json"], script="bench_latency.py", inputs=inputs,
                        overwrite=args.overwrite).check()


def main() -> None:
    args = parse_args()
    outputs = validate(args)

    from siren.io import RunTimer, atomic_write_json

    timer = RunTimer()
    with outputs.claimed():
        report = measure(args)
        with outputs.commit(args, timer) as staged:
            atomic_write_json(staged.path("latency.json"), report)
            staged.record(counts={"samples": report["n"], "rows": len(report["rows"])},
                          extra={"prompts_from": report["prompts_from"]})

    print(f"read {report['n']} prompts from {', '.join(report['prompts_from'])}; model {report['model']} "
          f"({report['dtype']}) on {report['device']}")
    print(f"{'decoding':>8} {'engine':>16} {'batch':>5} {'ms/sample':>10} {'samples/s':>10} {'ms/token':>9} {'warm-up s':>9}")
    for row in report["rows"]:
        per_token = f"{row['ms_per_token']:9.2f}" if row["decoding"] == "cot" else f"{'':9}"
        print(f"{row['decoding']:>8} {row['engine']:>16} {row['batch_size']:>5} {row['ms_per_sample']:10.2f} "
              f"{row['samples_per_s']:10.2f} {per_token} {row['warmup_seconds']:9.1f}")
    if report["speedup"]:
        print(f"speedup (CoT {report['cot']['engine']} / AO {report['ao']['engine']}, batch 1): {report['speedup']:.1f}x")
    print(f"wrote {outputs.folder / 'latency.json'} in {timer.seconds:.1f}s")


def measure(args: argparse.Namespace) -> dict:
    """Time every engine and cache asked for; returns latency.json's content."""
    import importlib.util

    import torch

    from siren import SirenError
    from siren.answer_only_engines import build_ao_engine, make_vllm_engine
    from siren.modeling import device_name, load_causal_lm
    from siren.prompts import answer_only_context, chat_prompt_text
    from siren.tokenization import load_tokenizer, rating_token_ids
    from siren.tools.latency import build_random_model, like_for_like_speedups, time_answer_only, time_cot

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SirenError(f"--device {device} asked for CUDA but no CUDA device is available")
    if args.random_init and not device.startswith("cuda"):
        raise SirenError(f"--random_init {args.random_init} needs a CUDA device (none is available here); "
                         "on CPU benchmark the tiny model with --model ckpt/tiny-qwen3")
    on_cuda = device.startswith("cuda")
    if args.ao_engines:
        engines = args.ao_engines
    elif on_cuda:
        with_vllm = importlib.util.find_spec("vllm") is not None and not args.random_init
        engines = ["eager", "compiled", *(["vllm"] if with_vllm else [])]
    else:
        engines = ["eager"]
    caches = args.cot_caches or (["dynamic", "static"] if on_cuda else ["dynamic"])
    if "vllm" in engines and (args.random_init or not on_cuda):
        raise SirenError("the vllm AO engine needs a CUDA device and the weights on disk (--model, not --random_init)")
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if on_cuda else "float32")
    dtype = getattr(torch, dtype_name)

    tokenizer = load_tokenizer(args.tokenizer or args.model)
    ratings = rating_token_ids(tokenizer)
    messages, data_files = load_messages(args)
    if args.random_init:
        model = build_random_model(args.random_init, tokenizer, device, dtype, args.seed)
        model_label = f"random-init {args.random_init}"
    else:
        model = load_causal_lm(args.model, dtype, device)
        model_label = str(args.model)
    prompts = [chat_prompt_text(tokenizer, m) for m in messages]
    ao_prompts = [answer_only_context(p) for p in prompts]
    eos_ids = model.generation_config.eos_token_id
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [tokenizer.eos_token_id])
    hardware = device_name(device)

    rows, engine_reports = [], {}
    for name in engines:
        llm = None
        if name == "vllm":
            llm = make_vllm_engine(args.model, dtype_name, gpu_memory_utilization=args.vllm_gpu_memory_utilization)
        for batch_size in args.ao_batch_sizes:
            engine = build_ao_engine(name, model, tokenizer, ratings, batch_size=batch_size, buckets=args.buckets,
                                     compile_backend=args.compile_backend, llm=llm)
            timing, _ = time_answer_only(engine, ao_prompts, device, batch_size=batch_size, warmup=args.warmup,
                                         progress=True)
            rows.append(timing.summary(hardware, dtype_name))
            engine_reports[f"{name}@{batch_size}"] = engine.report()
    for cache in caches:
        timing = time_cot(model, tokenizer, prompts, device, cot_tokens=args.cot_tokens or None,
                          max_new_tokens=args.max_new_tokens, eos_token_ids=eos_ids, cache=cache,
                          pad_to_multiple_of=args.pad_to_multiple_of if cache == "static" else None,
                          warmup=args.warmup, progress=True)
        rows.append(timing.summary(hardware, dtype_name))

    speedups = like_for_like_speedups(rows)
    fastest_cot = min((r for r in rows if r["decoding"] == "cot"), key=lambda r: r["ms_per_sample"])
    fastest_ao = min((r for r in rows if r["decoding"] == "ao" and r["batch_size"] == 1),
                     key=lambda r: r["ms_per_sample"], default=None)
    report = {
        "model": model_label,
        "tokenizer": str(args.tokenizer or args.model),
        "device": hardware,
        "cpu_threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "n": len(prompts),
        "warmup": args.warmup,
        "cot_tokens": args.cot_tokens or None,
        "prompts_from": [str(p) for p in data_files],
        "prompt_tokens_mean": {
            "cot": sum(map(len, tokenizer(prompts, add_special_tokens=False)["input_ids"])) / len(prompts),
            "ao": sum(map(len, tokenizer(ao_prompts, add_special_tokens=False)["input_ids"])) / len(prompts),
        },
        "rows": rows,
        "speedups": speedups,
        "engines": engine_reports,
        # The headline, as the paper reports it: per sample (batch 1), the fastest of each.
        "cot": fastest_cot,
        "ao": fastest_ao,
        "speedup": fastest_cot["ms_per_sample"] / fastest_ao["ms_per_sample"] if fastest_ao else None,
    }
    return report


if __name__ == "__main__":
    sys.exit(run_main(main))
