r"""Stage 6: answer-only (AO) inference. The model reads prompt + empty think + `<answer>` and the
next token is the rating: one forward pass per sample instead of a ~240-token chain of thought.

    python inference_ao_ddp.py --model ckpt/AO_Movies_HA/merged \
        --data_path data/Movies/hidden/max@10-long@True --split test --engine eager

Several processes (one per GPU; on CPU, gloo) split the rows and gather them back in order:

    accelerate launch --multi_gpu --num_processes 2 inference_ao_ddp.py --model ... --data_path ...

--engine picks the forward pass (siren.answer_only_engines): eager (Hugging Face, any device), compiled
(torch.compile with static length buckets and batch size: CUDA graphs on a GPU, the fast choice
there) or vllm (a one-token generation restricted to the rating tokens; GPU, merged models only).
Every engine gives the same constrained ratings. Writes `<output_dir>/predictions.jsonl`,
`metrics.json` (rows "ao": the decoded rating, "ao_expected": sum_r p(r) * r over the tokens
"1".."5"; latency timed after the warm-up, which is reported apart) and `manifest.json`, all or none. A 4c DatasetDict built with another tokenizer than --model's, and an
--adapter trained on another base than --model (its recorded weights digest), are refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from siren import SirenError, cli
from siren.cli import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from siren.answer_only import DECODES
    from siren.answer_only_engines import DEFAULT_BUCKETS, ENGINES

    parser = cli.stage_parser(__doc__)
    cli.add_model(parser, "a merged model folder (train_hidden_mask.py's merged/), or the base with --adapter")
    parser.add_argument("--adapter", default=None,
                        help="a LoRA adapter folder (train_hidden_mask.py's adapter/) to merge into --model")
    cli.add_data_path(parser, "the stage 4c DatasetDict, or a verl parquet folder (stage 2)")
    cli.add_split(parser)
    cli.add_output_dir(parser, "output folder; unset: results_ao/<model>/<split>-<decode>, where <model> is the model "
                               "folder's name, or its parent's for .../merged")
    cli.add_limit(parser, aliases=("--max_samples",))
    cli.add_batch_size(parser, default=16)
    parser.add_argument("--decode", choices=DECODES, default="constrained",
                        help="constrained: argmax over the rating tokens 1..5, never invalid; greedy: argmax over the "
                             "whole vocabulary, parsed, invalid outputs counted")
    parser.add_argument("--invalid_fill", type=float, default=5.0,
                        help="greedy only: the rating scored for invalid outputs, for comparability with the authors; "
                             "the invalid count is always reported")
    parser.add_argument("--engine", choices=ENGINES, default="eager",
                        help="forward pass: eager, compiled (static shapes; CUDA graphs on a GPU) or vllm (GPU)")
    parser.add_argument("--buckets", nargs="+", type=cli.positive_int, default=list(DEFAULT_BUCKETS),
                        help="--engine compiled: prompt length buckets in tokens; longer rows run eagerly (counted "
                             "in metrics.json, with a note); buckets that most rows do not fit are refused")
    parser.add_argument("--compile_backend", default="inductor",
                        help="--engine compiled: torch.compile backend (aot_eager compiles in seconds on a CPU)")
    cli.add_dtype(parser)
    cli.add_overwrite(parser)
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """Flags, inputs (the 4c tokenizer and the adapter's base against --model) and the output folder,
    on every process, so a refusal stops them all before any of them waits on the others."""
    from siren.answer import RATING_MAX, RATING_MIN
    from siren.answer_only import check_adapter_base, check_prompt_tokenizer, default_out_dir
    from siren.answer_only_data import check_data_path
    from siren.manifest import check_input_manifest
    from siren.outputs import StageOutputs

    if not RATING_MIN <= args.invalid_fill <= RATING_MAX:
        raise SirenError(f"--invalid_fill must be a rating in [{RATING_MIN}, {RATING_MAX}], got {args.invalid_fill}")
    if args.engine == "vllm" and (args.adapter or args.decode == "greedy"):
        raise SirenError("--engine vllm scores a merged model's rating tokens only: pass the merged folder, not "
                         "--adapter, and --decode constrained")
    check_data_path(args.data_path, args.split)  # before the heavy imports, so a typo fails at once
    check_input_manifest(args.data_path, made_by=("preprocess_hidden.py", "preprocess_grpo.py"), flag="--data_path")
    out_dir = Path(args.output_dir or default_out_dir(args.model, args.adapter, args.split, args.decode))
    outputs = StageOutputs(out_dir, ["predictions.jsonl", "metrics.json"], script="inference_ao_ddp.py",
                           inputs=[args.model, args.adapter, args.data_path], overwrite=args.overwrite).check()
    notes = [check_prompt_tokenizer(args.data_path, args.model),
             check_adapter_base(args.adapter, args.model) if args.adapter else None]
    return {"outputs": outputs, "notes": notes}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    from siren.io import RunTimer

    timer = RunTimer()
    checked = validate(args)
    outputs, notes = checked["outputs"], checked["notes"]

    from siren.answer_only import ao_batches, ao_metrics, gather_predictions, load_ao_model, predict
    from siren.answer_only_data import load_ao_rows
    from siren.answer_only_engines import build_ao_engine, check_bucket_fallback, count_fallback_rows, make_vllm_engine
    from siren.distributed import process_state
    from siren.io import atomic_write_json, atomic_write_jsonl
    from siren.modeling import device_name, resolve_dtype
    from siren.tokenization import count_tokens, load_tokenizer, rating_token_ids

    state = process_state()
    with outputs.claimed(state):
        tokenizer = load_tokenizer(args.model, padding_side="left")
        rows = load_ao_rows(args.data_path, args.split, tokenizer, limit=args.limit)
        if args.engine == "compiled":
            # Over every row, so every process gets the same answer, before the model loads.
            prompt_lengths = count_tokens(tokenizer, [row["prompt"] for row in rows])
            notes.append(check_bucket_fallback(prompt_lengths, args.buckets))
        dtype = resolve_dtype(args.dtype, state.device.type)
        if args.engine == "vllm":
            model, llm = None, make_vllm_engine(args.model, str(dtype).removeprefix("torch."), state.num_processes)
        else:
            model, llm = load_ao_model(args.model, args.adapter, dtype, state.device), None
        engine = build_ao_engine(args.engine, model, tokenizer, rating_token_ids(tokenizer), batch_size=args.batch_size,
                                 buckets=args.buckets, compile_backend=args.compile_backend, llm=llm)
        batches = ao_batches(tokenizer, rows, args.batch_size, state.process_index, state.num_processes)
        state.wait_for_everyone()
        results, seconds, warmup_seconds = predict(engine, tokenizer, rows, batches, decode=args.decode,
                                                   device=state.device, show_progress=state.is_local_main_process)
        gathered = gather_predictions(state, results, seconds, len(rows))
        if gathered is None:  # not the main process
            return
        results, process_seconds = gathered
        engine_report = engine.report()
        if args.engine == "compiled":
            # The rows of every process (the engine counted its own process's): each row once.
            engine_report["fallback_rows"] = count_fallback_rows(prompt_lengths, args.buckets)
        metrics = ao_metrics(results, decode=args.decode, invalid_fill=args.invalid_fill,
                             device=device_name(state.device), num_processes=state.num_processes,
                             batch_size=args.batch_size, dtype=str(dtype).removeprefix("torch."),
                             process_seconds=process_seconds, engine=engine_report, warmup_seconds=warmup_seconds)
        ao, expected = metrics["predictions"]["ao"], metrics["predictions"]["ao_expected"]
        with outputs.commit({**vars(args), "output_dir": str(outputs.folder)}, timer) as staged:
            atomic_write_jsonl(staged.path("predictions.jsonl"), results)
            atomic_write_json(staged.path("metrics.json"), metrics)
            staged.record(counts={"rows": len(results), "invalid": ao["n_invalid"], "processes": state.num_processes})
    for note in notes:
        if note:
            print(note)
    print(f"read {len(results)} {args.split} rows from {args.data_path}; {args.decode} AO: MAE {ao['mae']:.4f} RMSE "
          f"{ao['rmse']:.4f} acc {ao['acc']:.4f} invalid {ao['n_invalid']}; expected rating: MAE {expected['mae']:.4f} "
          f"RMSE {expected['rmse']:.4f}; {metrics['latency']['samples_per_s']:.1f} samples/s on {state.num_processes} x "
          f"{metrics['latency']['device']}; wrote {outputs.folder}/predictions.jsonl, metrics.json, manifest.json in "
          f"{timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
