r"""Stage 4b: the teacher's hidden states (every layer) at the last token of prompt + CoT + `<answer>`.

    accelerate launch --num_processes 1 extract_last_hidden_ddp.py --model ckpt/GRPO_Movies_step100 \
        --data_path data/Movies/verl/max@10-long@True --thinking_path results_train/Movies \
        --output_dir results_hidden/Movies --only_correct

Reads the parquet split and stage 4a's results.jsonl (+ mask.pt with --only_correct) and writes
teacher_hidden.npy [n, L, H], teacher_index.npy [n] (the parquet row of each) and manifest.json,
all or none of them. A results.jsonl that 4a's manifest says another model wrote is refused.
Rows without a `</think>` have no teacher context and are skipped (counted), as are rows whose
context does not end in the tokens of `<answer>` (`unaligned`: the reasoning's last characters
merged with the tag, so there is no aligned position). Every process streams
its rows to a shard on disk; the main process merges them in dataset order, so memory does not
grow with the split, and any process count gives the same bytes. The authors' README flags
(`--model --thinking_path --data_path --batch_size --out_dir`) are accepted as written.
"""

from __future__ import annotations

import argparse
import sys

from siren import cli
from siren.cli import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = cli.stage_parser(__doc__)
    cli.add_model(parser, "the model that wrote the CoT (weights + tokenizer)")
    cli.add_data_path(parser, "verl parquet folder (max@N-long@bool), the one stage 4a read")
    parser.add_argument("--thinking_path", required=True, help="stage 4a's results.jsonl, or its folder")
    cli.add_split(parser, default="train")
    cli.add_limit(parser, help="first N rows of the split; must match stage 4a's --limit (unset: all)")
    cli.add_output_dir(parser, "output folder; unset: results_hidden/{category}")
    cli.add_batch_size(parser, default=8, help="contexts per forward pass, per process")
    cli.add_dtype(parser)
    parser.add_argument("--save_dtype", default="float32", choices=["float32", "float16"],
                        help="dtype of teacher_hidden.npy; float16 halves the disk but fails on overflow")
    parser.add_argument("--only_correct", action="store_true", help="keep only rows the mask marks correct (saves disk)")
    cli.add_overwrite(parser)
    return parser.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """Inputs (stage 4a's manifest among them) and the output folder, on every process, before any model loads."""
    from siren import SirenError, cot_results, teacher_hidden
    from siren.manifest import check_input_manifest
    from siren.outputs import StageOutputs
    from siren.verl_data import category_of, load_split_rows, parquet_path

    thinking_path = cot_results.thinking_file(args.thinking_path)
    data_file = parquet_path(args.data_path, args.split)
    check_input_manifest(args.data_path, made_by="preprocess_grpo.py", flag="--data_path")
    stage4a = check_input_manifest(thinking_path, made_by=cot_results.STAGE_4A_WRITERS, flag="--thinking_path",
                                   expect={"split": (args.split, "--split"), "limit": (args.limit, "--limit")})
    recorded = (stage4a or {}).get("data_sha256")
    if data_file.is_file() and recorded and recorded != cot_results.file_sha256(data_file):
        # Same rows, other prompts (e.g. another max@N folder): the reasoning was written for other prompts.
        raise SirenError(f"--thinking_path {thinking_path} was written for another parquet file than {data_file} "
                         "(its manifest's data_sha256 differs): give the --data_path stage 4a read")
    rows = load_split_rows(args.data_path, args.split, args.limit)
    outputs = StageOutputs(args.output_dir or f"results_hidden/{category_of(rows)}",
                           [teacher_hidden.HIDDEN_NAME, teacher_hidden.INDEX_NAME], script="extract_last_hidden_ddp.py",
                           inputs=[data_file, thinking_path, args.model], overwrite=args.overwrite).check()
    return {"thinking_path": thinking_path, "data_file": data_file, "rows": rows, "outputs": outputs}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checked = validate(args)

    from siren import cot_results, teacher_contexts, teacher_hidden
    from siren.distributed import process_state
    from siren.io import MANIFEST_NAME, RunTimer
    from siren.modeling import load_causal_lm, model_record, resolve_dtype
    from siren.tokenization import load_tokenizer

    timer = RunTimer()
    rows, thinking_path, outputs = checked["rows"], checked["thinking_path"], checked["outputs"]
    out_dir = outputs.folder
    state = process_state()
    with outputs.claimed(state):
        thinking, mask = cot_results.read_stage4a(thinking_path, rows, with_mask=args.only_correct)
        selection = teacher_contexts.select_teacher_rows(thinking, mask)
        tokenizer = load_tokenizer(args.model)  # a missing --model folder stops here, before its record is compared
        selection, lengths = teacher_contexts.align_teacher_rows(tokenizer, rows, thinking, selection)
        model = model_record(args.model)
        note = cot_results.check_thinking_model(thinking_path, model)
        if note and state.is_main_process:
            print(note)
        lm = load_causal_lm(args.model, resolve_dtype(args.dtype, state.device.type), state.device)
        with teacher_hidden.scratch_folder(out_dir / ".hidden_parts", state) as parts_dir:
            extraction = teacher_hidden.extract_teacher_states(lm, tokenizer, rows, thinking, selection.positions,
                                                               state=state, parts_dir=parts_dir,
                                                               batch_size=args.batch_size, save_dtype=args.save_dtype,
                                                               lengths=lengths)
            if state.is_main_process:
                with outputs.commit(args, timer) as staged:
                    teacher_hidden.write_teacher_files(staged.dir, extraction, rows)
                    # rows/s: the main process's forward passes only, no start-up
                    staged.record(counts={**selection.counts(), **extraction.counts()},
                                  extra={"model": model,
                                         "rows_per_s_per_process": round(extraction.rows_per_s, 3)})
        if state.is_main_process:
            size_mb = (out_dir / teacher_hidden.HIDDEN_NAME).stat().st_size / 2**20
            print(f"read {len(rows)} rows of {checked['data_file']} and {thinking_path}; {selection.summary()}")
            print(f"wrote {out_dir / teacher_hidden.HIDDEN_NAME} [{len(selection.positions)}, {extraction.row_shape[0]}, "
                  f"{extraction.row_shape[1]}] {args.save_dtype} ({size_mb:.1f} MiB), {teacher_hidden.INDEX_NAME} and "
                  f"{MANIFEST_NAME} in {timer.seconds:.1f}s")
        state.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(run_main(main))
