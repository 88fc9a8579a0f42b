"""Latency of answer-only (AO) against CoT decoding on the same model and prompts.

    python scripts/bench_latency.py --model ckpt/tiny-qwen3 --category Movies --num_samples 4 --warmup 1 --out_dir results/demo/bench_latency

Times one sample at a time after a warm-up, on the device clock, and writes <out_dir>/latency.json
(`cot` and `ao` latency dicts, the speedup) and manifest.json. `--cot_tokens 238` (the default)
forces every CoT to the paper's average length. On a GPU, `--random_init qwen3-4b` benchmarks a
randomly initialised model of Qwen3-4B's real shape in bf16 (the tokenizer still comes from --model
or --tokenizer). The command above takes about 5 minutes on 2 CPU cores, nearly all of it the
five 238-token CoT generations; pass a smaller --cot_tokens for a quick look.
"""

import argparse
import sys

from siren.cli import run_main


def parse_args() -> argparse.Namespace:
    from siren.latency import RANDOM_INIT_SHAPES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ckpt/tiny-qwen3",
                        help="model directory (weights + tokenizer) (default: %(default)s)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: --model)")
    parser.add_argument("--random_init", choices=sorted(RANDOM_INIT_SHAPES), default=None,
                        help="benchmark a random model of this real shape instead of --model's weights (CUDA only)")
    parser.add_argument("--data_path", default=None,
                        help="verl parquet directory to take prompts from (default: build them from the split files)")
    parser.add_argument("--category", default="Movies", help="dataset category (default: %(default)s)")
    parser.add_argument("--data_root", default=None,
                        help="folder holding <category>/ (default: $SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data)")
    parser.add_argument("--split", default="test", choices=("train", "valid", "val", "test"),
                        help="split the prompts come from (default: %(default)s)")
    parser.add_argument("--max_history", type=int, default=10,
                        help="recent interactions per prompt when building from split files (default: %(default)s)")
    parser.add_argument("--num_samples", type=int, default=16, help="timed samples (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up samples (default: %(default)s)")
    parser.add_argument("--cot_tokens", type=int, default=238,
                        help="force exactly this many CoT tokens (EOS blocked); 0 lets CoT stop at EOS (default: %(default)s)")
    parser.add_argument("--max_new_tokens", type=int, default=1024,
                        help="CoT length cap when --cot_tokens is 0 (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="model dtype; auto = bfloat16 on CUDA, float32 on CPU (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init (default: %(default)s)")
    parser.add_argument("--out_dir", default="results/bench_latency", help="where latency.json goes (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing latency.json")
    return parser.parse_args()


def load_messages(args) -> tuple[list[list[dict]], list]:
    """The chat prompts of the first --num_samples rows and the files they came from."""
    from pathlib import Path

    from siren.data import load_split, resolve_category_dir, split_path
    from siren.prompts import build_messages
    from siren.verl_data import load_split_rows, parquet_path

    if args.data_path:
        rows = load_split_rows(args.data_path, args.split, limit=args.num_samples)
        return [row["prompt"] for row in rows], [parquet_path(args.data_path, args.split)]
    split = "valid" if args.split == "val" else args.split
    path = split_path(resolve_category_dir(args.category, args.data_root), split)
    records = load_split(path)[: args.num_samples]
    messages = [build_messages(args.category, r["history"], r["target"], "", args.max_history) for r in records]
    return messages, [Path(path)]


def main() -> None:
    args = parse_args()

    from pathlib import Path

    from siren import SirenError
    from siren.io import RunTimer, atomic_write_json, check_outputs_free, write_manifest

    timer = RunTimer()
    if args.num_samples < 1 or args.warmup < 0 or args.cot_tokens < 0 or args.max_new_tokens < 1:
        raise SirenError("--num_samples and --max_new_tokens must be at least 1; --warmup and --cot_tokens at least 0")
    if not args.random_init and not (Path(args.model) / "config.json").is_file():
        raise SirenError(f"{args.model} holds no model (no config.json); build one with scripts/make_tiny_model.py")
    out_dir = Path(args.out_dir)
    latency_path = out_dir / "latency.json"
    check_outputs_free([latency_path], args.overwrite)

    import torch

    from siren.latency import build_random_model, time_answer_only, time_cot
    from siren.modeling import device_name
    from siren.prompts import answer_only_context, chat_prompt_text
    from siren.tokenization import load_tokenizer, rating_token_ids

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SirenError(f"--device {device} asked for CUDA but no CUDA device is available")
    if args.random_init and not device.startswith("cuda"):
        raise SirenError(f"--random_init {args.random_init} needs a CUDA device (none is available here); "
                         "on CPU benchmark the tiny model with --model ckpt/tiny-qwen3")
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    dtype = getattr(torch, dtype_name)

    tokenizer = load_tokenizer(args.tokenizer or args.model)
    rating_ids = rating_token_ids(tokenizer)
    messages, data_files = load_messages(args)

    if args.random_init:
        model = build_random_model(args.random_init, tokenizer, device, dtype, args.seed)
        model_label = f"random-init {args.random_init}"
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(device).eval()
        model_label = str(args.model)

    prompts = [chat_prompt_text(tokenizer, m) for m in messages]

    def encode(text: str):
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(device)

    cot_inputs = [encode(p) for p in prompts]
    ao_inputs = [encode(answer_only_context(p)) for p in prompts]
    eos_ids = model.generation_config.eos_token_id
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [tokenizer.eos_token_id])

    hardware = device_name(device)
    ao_timing, _ = time_answer_only(model, ao_inputs, list(rating_ids.values()), device, args.warmup, progress=True)
    cot_timing = time_cot(model, cot_inputs, device, cot_tokens=args.cot_tokens or None,
                          max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                          eos_token_ids=eos_ids, warmup=args.warmup, progress=True)
    ao, cot = ao_timing.summary(hardware), cot_timing.summary(hardware)
    report = {
        "model": model_label,
        "tokenizer": str(args.tokenizer or args.model),
        "device": hardware,
        "cpu_threads": torch.get_num_threads(),
        "dtype": dtype_name,
        "n": len(prompts),
        "warmup": args.warmup,
        "batch_size": 1,
        "cot_tokens": args.cot_tokens or None,
        "prompts_from": [str(p) for p in data_files],
        "prompt_tokens_mean": {
            "cot": sum(x.shape[1] for x in cot_inputs) / len(cot_inputs),
            "ao": sum(x.shape[1] for x in ao_inputs) / len(ao_inputs),
        },
        "cot": cot,
        "ao": ao,
        "speedup": cot["ms_per_sample"] / ao["ms_per_sample"],
    }
    atomic_write_json(latency_path, report)
    write_manifest(out_dir, script="bench_latency.py", args=args, inputs=data_files, outputs=[latency_path],
                   counts={"samples": len(prompts)}, seconds=timer.seconds)

    print(f"read {len(prompts)} prompts from {', '.join(map(str, data_files))}; model {model_label} "
          f"({dtype_name}) on {hardware}")
    for name, entry in (("CoT", cot), ("AO", ao)):
        print(f"{name:>4}: {entry['ms_per_sample']:10.2f} ms/sample  {entry['samples_per_s']:9.2f} samples/s  "
              f"{entry['generated_tokens_per_sample']:6.1f} generated tokens/sample")
    print(f"speedup (CoT ms / AO ms): {report['speedup']:.1f}x")
    print(f"wrote {latency_path} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
