"""Stage 4b: the teacher's hidden states (every layer) at the last token of prompt + CoT + `<answer>`.

    accelerate launch --num_processes 1 extract_last_hidden_ddp.py --model ckpt/GRPO_Movies_step100 \
        --data_path data/Movies/verl/max@10-long@True --thinking_path results_train/Movies \
        --out_dir results_hidden/Movies --only_correct

Reads the parquet split and stage 4a's results.jsonl (+ mask.pt with --only_correct) and writes
teacher_hidden.npy [n, L, H], teacher_index.npy [n] (the parquet row of each) and manifest.json.
Rows without a `</think>` have no teacher context and are skipped (counted). Every process streams
its rows to a shard on disk; the main process merges them in dataset order, so memory does not
grow with the split.
"""

import argparse
import sys

from siren.cli import run_main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the model that wrote the CoT (weights + tokenizer)")
    parser.add_argument("--data_path", required=True, help="verl parquet directory (max@N-long@bool)")
    parser.add_argument("--thinking_path", required=True, help="stage 4a results.jsonl, or its directory")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"], help="parquet split (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None,
                        help="first N rows of the split; must match stage 4a's --limit (default: all)")
    parser.add_argument("--out_dir", default=None, help="output directory (default: results_hidden/{category})")
    parser.add_argument("--batch_size", type=int, default=8, help="contexts per forward pass, per process (default: %(default)s)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="model dtype; auto is bfloat16 on CUDA, float32 on CPU (default: %(default)s)")
    parser.add_argument("--save_dtype", default="float32", choices=["float32", "float16"],
                        help="dtype of teacher_hidden.npy; float16 halves the disk but fails on overflow (default: %(default)s)")
    parser.add_argument("--only_correct", action="store_true", help="keep only rows the mask marks correct (saves disk)")
    parser.add_argument("--overwrite", action="store_true", help="replace finished outputs in --out_dir")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    import shutil
    import time
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from siren import SirenError
    from siren.cot import MASK_NAME, check_mask_matches, check_thinking_matches, load_mask, load_thinking, thinking_file
    from siren.distributed import process_state
    from siren.hidden import (
        HIDDEN_NAME,
        INDEX_NAME,
        NpyRows,
        check_contexts,
        encode_left_padded,
        last_token_hidden,
        merge_hidden_shards,
        peak_rss_mb,
        reset_peak_rss,
        shard_paths,
        teacher_text,
    )
    from siren.io import RunTimer, atomic_path, check_outputs_free, write_manifest
    from siren.modeling import load_causal_lm, resolve_dtype
    from siren.tokenization import load_tokenizer
    from siren.verl_data import category_of, load_split_rows, parquet_path

    timer = RunTimer()
    if args.batch_size < 1:
        raise SirenError(f"--batch_size must be at least 1, got {args.batch_size}")
    if args.limit is not None and args.limit < 1:
        raise SirenError(f"--limit must be at least 1, got {args.limit}")
    thinking_path = thinking_file(args.thinking_path)
    rows = load_split_rows(args.data_path, args.split, args.limit)
    out_dir = Path(args.out_dir or f"results_hidden/{category_of(rows)}")
    hidden_path, index_path = out_dir / HIDDEN_NAME, out_dir / INDEX_NAME
    check_outputs_free([hidden_path, index_path], args.overwrite)

    thinking = load_thinking(thinking_path)
    check_thinking_matches(rows, thinking, thinking_path)
    if args.only_correct:
        mask_path = thinking_path.parent / MASK_NAME
        mask = check_mask_matches(load_mask(mask_path, len(thinking), "the thinking file"), thinking, mask_path)
    else:
        mask = [True] * len(rows)
    no_reasoning = sum(t["reasoning"] is None for t in thinking)
    selected = [i for i, t in enumerate(thinking) if t["reasoning"] is not None and mask[i]]
    if not selected:
        raise SirenError(f"no rows to extract: {no_reasoning} of {len(rows)} have no reasoning"
                         + (f", {len(rows) - sum(mask)} are masked out" if args.only_correct else ""))
    tokenizer = load_tokenizer(args.model)

    state = process_state()
    rank, world, is_main = state.process_index, state.num_processes, state.is_main_process
    # Every process checks every row (cheap next to the forward passes), so a bad row stops all
    # of them with the same message instead of leaving the others waiting.
    lengths = check_contexts(tokenizer, rows, thinking, selected)
    mine = selected[rank::world]
    my_lengths = lengths[rank::world]
    # Longest first: similar lengths share a batch (little padding) and an out-of-memory batch
    # shows up at once, not hours in.
    order = sorted(range(len(mine)), key=lambda slot: -my_lengths[slot])

    model = load_causal_lm(args.model, resolve_dtype(args.dtype, state.device.type), state.device)
    load_peak_mb = peak_rss_mb()
    peak_was_reset = reset_peak_rss()
    row_shape = (model.config.num_hidden_layers, model.config.hidden_size)
    parts_dir = out_dir / ".hidden_parts"
    shard_hidden, shard_index = shard_paths(parts_dir, rank)
    if is_main:
        shutil.rmtree(parts_dir, ignore_errors=True)
        parts_dir.mkdir(parents=True)
    state.wait_for_everyone()
    np.save(shard_index, np.asarray(mine, dtype=np.int64))
    shard = NpyRows(shard_hidden, len(mine), row_shape, args.save_dtype, create=True)
    extract_start = time.perf_counter()
    try:
        for start in tqdm(range(0, len(order), args.batch_size), desc="teacher hidden", disable=not is_main):
            slots = order[start:start + args.batch_size]
            texts = [teacher_text(tokenizer, rows[mine[s]], thinking[mine[s]]["reasoning"]) for s in slots]
            hidden = last_token_hidden(model, *encode_left_padded(tokenizer, texts)).float().cpu().numpy()
            if hidden.shape[1:] != row_shape:
                raise SirenError(f"the model returned hidden states of shape {hidden.shape[1:]}, expected {row_shape}")
            values = hidden.astype(args.save_dtype)
            if not np.isfinite(values).all():
                bad = sorted(int(rows[mine[s]]["extra_info"]["index"]) for s, ok in
                             zip(slots, np.isfinite(values).reshape(len(slots), -1).all(1), strict=True) if not ok)
                raise SirenError(f"non-finite hidden states at rows {bad[:5]}"
                                 + (" (float16 overflow; use --save_dtype float32)" if args.save_dtype == "float16" else ""))
            for slot, value in zip(slots, values, strict=True):
                shard.write(slot, value[None])
    finally:
        shard.close(sync=True)
    extract_seconds = time.perf_counter() - extract_start
    state.wait_for_everyone()

    if is_main:
        with atomic_path(hidden_path) as tmp:
            merge_hidden_shards(parts_dir, world, selected, row_shape, args.save_dtype, tmp)
        with atomic_path(index_path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, np.asarray([int(rows[i]["extra_info"]["index"]) for i in selected], dtype=np.int64))
        shutil.rmtree(parts_dir)
        counts = {
            "rows": len(rows), "extracted": len(selected), "no_reasoning": no_reasoning,
            "masked_out": len(rows) - sum(mask), "processes": world,
            "layers": row_shape[0], "hidden_size": row_shape[1],
        }
        write_manifest(out_dir, script="extract_last_hidden_ddp.py", args=args,
                       inputs=[parquet_path(args.data_path, args.split), thinking_path, args.model],
                       outputs=[hidden_path, index_path], counts=counts, seconds=timer.seconds,
                       extra={"peak_rss_mb_loading": round(load_peak_mb, 1),
                              # after the model is loaded: the extraction and merge alone (null
                              # where the kernel counter cannot be reset)
                              "peak_rss_mb_extracting": round(peak_rss_mb(), 1) if peak_was_reset else None,
                              # forward passes only (no start-up), of the main process's shard
                              "rows_per_s_per_process": round(len(mine) / max(extract_seconds, 1e-9), 3)})
        size_mb = hidden_path.stat().st_size / 2**20
        print(f"read {len(rows)} rows of {parquet_path(args.data_path, args.split)} and {thinking_path}; "
              f"{no_reasoning} without reasoning"
              + (f", {len(rows) - sum(mask)} masked out" if args.only_correct else ""))
        print(f"wrote {hidden_path} [{len(selected)}, {row_shape[0]}, {row_shape[1]}] {args.save_dtype} "
              f"({size_mb:.1f} MiB), {index_path} and manifest.json in {timer.seconds:.1f}s")
    state.wait_for_everyone()


if __name__ == "__main__":
    sys.exit(run_main(main))
