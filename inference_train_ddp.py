r"""Stage 4a: the GRPO model's chain-of-thought answers on a parquet split, with a correctness mask.

    accelerate launch --num_processes 1 inference_train_ddp.py --model ckpt/GRPO_Movies_step100 \
        --data_path data/Movies/verl/max@10-long@True --split train --output_dir results_train/Movies

Writes results.jsonl (one row per parquet row, in order), mask.pt (bool per row: well-formed
response with the exact rating), metrics.json and manifest.json (with the model's identity, which
stage 4b checks) to --output_dir, all or none of them. Any number of processes (`accelerate launch
--num_processes K`, on GPUs or, with --multi_gpu, on CPU over gloo) gives the same files. Each
process flushes its finished rows to <output_dir>/partial/ after every batch; rerunning the same
command after a crash skips them, unless the model (weights, config.json, generation_config.json,
tokenizer, chat template) or the parquet file changed meanwhile (refused).
The authors' README command (`--model_path ... --data_path ...`) is accepted as written.
"""

from __future__ import annotations

import argparse
import sys

from siren import cli
from siren.cli import nonnegative_int, positive_int, run_main, str2bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_model(parser, "GRPO model folder (weights + tokenizer)")
    cli.add_data_path(parser, "verl parquet folder (max@N-long@bool) written by preprocess_grpo.py")
    cli.add_split(parser, default="train")
    cli.add_output_dir(parser, "output folder; unset: results_{split}/{category}")
    cli.add_limit(parser)
    cli.add_batch_size(parser, default=8, help="prompts per generate call and per flush, per process")
    parser.add_argument("--max_new_tokens", type=positive_int, default=1024, help="generation length limit")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling, used when temperature > 0")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed, used when temperature > 0")
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"], help="generation engine")
    parser.add_argument("--cache_implementation", default="dynamic", choices=["dynamic", "static"],
                        help="--backend hf's KV cache: static preallocates it and, on a GPU, lets transformers "
                             "compile the decode step (same text, faster decoding after a first compiling call)")
    cli.add_dtype(parser)
    parser.add_argument("--resume", type=str2bool, default=True,
                        help="reuse finished rows in <output_dir>/partial from an interrupted run with the same "
                             "settings, model and parquet file; false deletes them and starts over")
    cli.add_overwrite(parser)
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """Flags, the parquet split and the output folder, on every process, before any model loads."""

    from siren import cot_results
    from siren.cot_generation import SamplingSettings, check_backend
    from siren.manifest import check_input_manifest
    from siren.outputs import StageOutputs
    from siren.verl_data import category_of, load_split_rows, parquet_path

    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p)
    settings.check()
    check_backend(args.backend, args.cache_implementation)
    data_file = parquet_path(args.data_path, args.split)
    check_input_manifest(args.data_path, made_by="preprocess_grpo.py", flag="--data_path")
    rows = load_split_rows(args.data_path, args.split, args.limit)
    category = category_of(rows)
    outputs = StageOutputs(args.output_dir or f"results_{args.split}/{category}",
                           [cot_results.RESULTS_NAME, cot_results.MASK_NAME, cot_results.METRICS_NAME],
                           script=cot_results.SCRIPT_NAME,
                           inputs=[data_file, args.model], overwrite=args.overwrite).check()
    return {"settings": settings, "data_file": data_file, "rows": rows, "category": category, "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checked = validate(args)
    import shutil

    from siren import cot_inference, cot_results
    from siren.cot_generation import load_generator
    from siren.distributed import process_state
    from siren.io import RunTimer
    from siren.modeling import device_name, model_record
    from siren.tokenization import load_tokenizer

    timer = RunTimer()
    rows, settings, outputs = checked["rows"], checked["settings"], checked["outputs"]
    state = process_state()
    with outputs.claimed(state):
        model = model_record(args.model)
        part_dir = cot_inference.partial_dir(outputs.folder)
        resume_key = cot_inference.resume_settings(model=model, data_file=checked["data_file"],
                                                   backend=args.backend, dtype=args.dtype, seed=args.seed,
                                                   sampling=settings, cache=args.cache_implementation)
        # Before transformers loads: a machine that cannot see the others' parts stops in seconds.
        finished = cot_inference.prepare_parts(part_dir, resume_key, state, resume=args.resume)
        tokenizer = load_tokenizer(args.model)
        generator = load_generator(args.backend, args.model, args.dtype, settings, state, args.seed, tokenizer,
                                   args.cache_implementation)
        cot_inference.generate_results(rows, tokenizer, generator, state=state, part_dir=part_dir,
                                       finished=finished, batch_size=args.batch_size, seed=args.seed,
                                       settings=resume_key)

        if state.is_main_process:
            results = cot_inference.merged_results(part_dir, len(rows), device_name(state.device),
                                                   engine=generator.name, batch_size=args.batch_size,
                                                   dtype=generator.dtype_name)
            with outputs.commit(args, timer) as staged:
                metrics = results.write(staged.dir)
                staged.record(counts={**metrics["responses"], "processes": state.num_processes,
                                      "resumed_rows": len(finished)},
                              extra={"category": checked["category"], "model": model,
                                     "data_sha256": resume_key["data_sha256"]})
            shutil.rmtree(part_dir)
            print(f"read {len(rows)} rows of {checked['data_file']}; {cot_results.metrics_line(metrics)}")
            print(f"wrote {', '.join(outputs.names)} to {outputs.folder} in {timer.seconds:.1f}s")
        state.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(run_main(main))
