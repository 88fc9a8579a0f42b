#!/usr/bin/env bash
# `make demo`: stages 1-6 of SIREN end to end on CPU, on the real Movies data, with the tiny random
# Qwen3 (real Qwen3 vocabulary) in place of Qwen3-4B. Everything lands in results/demo/; the run
# ends by printing the three tables (results/demo/tables.md) and the figure's path.
#
#   bash scripts/demo.sh                       # what `make demo` runs (after `make install tiny-model`)
#   DATA_ROOT=/path/to/data NUM_USERS=100 LIMIT=100 RUN=results/demo100 bash scripts/demo.sh
#
# Settings (environment): DATA_ROOT, CATEGORY (Movies), MODEL (ckpt/tiny-qwen3), RUN (results/demo),
# NUM_USERS (200), LIMIT (200), MAX_NEW_TOKENS (48), CACHE_DIR (.cache/embeddings), BENCH_SAMPLES (4),
# BENCH_COT_TOKENS (64), PYTHON (.venv/bin/python).
#
# The numbers measure plumbing, not SIREN: the model is random (a short format warm start stands
# in for Qwen3-4B's ability to write <think>/<answer>), GRPO runs 2 steps, alignment a few dozen.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"

PY=${PYTHON:-$REPO_DIR/.venv/bin/python}
CATEGORY=${CATEGORY:-Movies}
DATA_ROOT=${DATA_ROOT:-}
MODEL=${MODEL:-ckpt/tiny-qwen3}
RUN=${RUN:-results/demo}
NUM_USERS=${NUM_USERS:-200}    # users in the demo's slice of the data (all their rows)
LIMIT=${LIMIT:-200}            # rows per split kept by stage 2 (the slice's test split has one per user)

MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-48}
CACHE_DIR=${CACHE_DIR:-.cache/embeddings}
BENCH_SAMPLES=${BENCH_SAMPLES:-4}
BENCH_COT_TOKENS=${BENCH_COT_TOKENS:-64}   # the paper's CoT averages 238 tokens; 64 keeps the CPU demo short
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

die() { echo "error: $*" >&2; exit 2; }

# The data root, found as every stage finds it ($SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data).
DATA_ROOT=$("$PY" -m siren.data "$CATEGORY" ${DATA_ROOT:+--data_root "$DATA_ROOT"}) || exit 2
[[ -f "$MODEL/config.json" ]] || die "no model at $MODEL; build it with: $PY scripts/make_tiny_model.py --output_dir $MODEL"

VERL="$RUN/verl/max@10-long@True"
GRPO="$RUN/ckpt/GRPO_${CATEGORY}_step2"
SLICE="$RUN/data"
STEPS=13
START=$SECONDS
step_no=0
step() {
    step_no=$((step_no + 1))
    printf '\n\033[1m[%d/%d] %s\033[0m  (%ds elapsed)\n' "$step_no" "$STEPS" "$1" "$((SECONDS - START))"
}

[[ -n "$RUN" && "$RUN" != "/" && "$RUN" != "." ]] || die "RUN must name the demo's own output folder"
rm -rf "$RUN"
mkdir -p "$RUN"
echo "SIREN demo: data $DATA_ROOT/$CATEGORY, model $MODEL, $LIMIT rows per split, outputs in $RUN/"

step "slice: the first $NUM_USERS users of $DATA_ROOT/$CATEGORY"
"$PY" scripts/slice_data.py --category "$CATEGORY" --data_root "$DATA_ROOT" --num_users "$NUM_USERS" --output_root "$SLICE"

step "stage 1: interest sketch (MiniLM embeddings, K=20 topics)"
"$PY" generate_interest_sketch.py --category "$CATEGORY" --data_root "$SLICE" \
    --encoder_model minilm --cache_dir "$CACHE_DIR" --tokenizer "$MODEL" --output_dir "$RUN/sketch"

step "stage 2: verl parquet files + prompt-token report"
"$PY" preprocess_grpo.py --category "$CATEGORY" --data_root "$SLICE" --max_history 10 \
    --use_long_history True --sketch_path "$RUN/sketch/user_feature.jsonl" --tokenizer "$MODEL" \
    --limit "$LIMIT" --output_dir "$VERL"
cp "$VERL/prompt_stats.json" "$VERL/prompt_tokens_test.npz" "$RUN/"

step "format warm start (stands in for a pretrained model that writes <think>/<answer>)"
"$PY" scripts/warm_start_format.py --model "$MODEL" --data_path "$VERL" --max_length 1024 \
    --output_dir "$RUN/ckpt/warm_start"

step "stage 3: GRPO, TRL backend, 2 steps"
BACKEND=trl PYTHON="$PY" MODEL_PATH="$RUN/ckpt/warm_start" CATEGORY="$CATEGORY" DATA_DIR="$VERL" \
    CKPT_DIR="$RUN/ckpt" TRAINER_DIR="$RUN/ckpt/trl" MAX_STEPS=2 ROLLOUT_N=2 BATCH_SIZE=2 \
    MICRO_BATCH_SIZE=1 MAX_RESPONSE_LENGTH="$MAX_NEW_TOKENS" TEST_FREQ=0 SAVE_FREQ=0 \
    bash main_grpo_amazon.sh

step "stage 4a: CoT answers of the GRPO model (train rows: teacher; test rows: the CoT table row)"
"$PY" inference_train_ddp.py --model "$GRPO" --data_path "$VERL" --split train \
    --max_new_tokens "$MAX_NEW_TOKENS" --batch_size 16 --output_dir "$RUN/cot_train"
"$PY" inference_train_ddp.py --model "$GRPO" --data_path "$VERL" --split test \
    --max_new_tokens "$MAX_NEW_TOKENS" --batch_size 16 --output_dir "$RUN/cot_test"

step "stage 4b: teacher hidden states at <answer> (correct rows only)"
"$PY" extract_last_hidden_ddp.py --model "$GRPO" --data_path "$VERL" \
    --thinking_path "$RUN/cot_train" --output_dir "$RUN/hidden" --only_correct

step "stage 4c: answer-only prompt/completion dataset"
"$PY" preprocess_hidden.py --data_path "$VERL" --model "$GRPO" --output_dir "$RUN/ao_data"

step "stage 6 (before alignment): answer-only decoding of the GRPO model"
"$PY" inference_ao_ddp.py --model "$GRPO" --data_path "$RUN/ao_data" --split test --engine eager --batch_size 16 \
    --output_dir "$RUN/ao_before"

step "stage 5: hidden-state alignment (LoRA on K/V, cosine, kd_ratio 1.0)"
"$PY" train_hidden_mask.py --model "$GRPO" --data_path "$RUN/ao_data" \
    --teacher_hidden_path "$RUN/hidden" --teacher_mask_path "$RUN/cot_train/mask.pt" \
    --output_dir "$RUN/ckpt/AO_${CATEGORY}_HA" --training_ratio 1.0 --max_steps 20 --warmup_steps 2 \
    --eval_steps 10 --save_steps 10 --eval_limit 32

step "stage 6 (after alignment): answer-only decoding of the aligned model"
"$PY" inference_ao_ddp.py --model "$RUN/ckpt/AO_${CATEGORY}_HA/merged" --data_path "$RUN/ao_data" \
    --split test --engine eager --batch_size 16 --output_dir "$RUN/ao_after"

step "baselines (cornac), fitted on the slice's train split, scored on the same test rows"
"$PY" scripts/baselines.py --category "$CATEGORY" --data_root "$SLICE" --output_dir "$RUN/baselines"

step "latency: AO (eager, compiled) vs CoT on the same prompts (CoT forced to $BENCH_COT_TOKENS tokens)"
# On a CPU the compiled engine uses aot_eager (static-shape capture, no code generation): the GPU
# path's shapes and padding without inductor's minutes of compiling; it is not faster here.
"$PY" scripts/bench_latency.py --model "$GRPO" --data_path "$VERL" --limit "$BENCH_SAMPLES" --warmup 1 \
    --cot_tokens "$BENCH_COT_TOKENS" --ao_engines eager compiled --compile_backend aot_eager \
    --output_dir "$RUN/bench_latency"

"$PY" scripts/make_tables.py --run_dir "$RUN"
echo
echo "demo finished in $((SECONDS - START))s: tables in $RUN/tables.md (+ CSVs), figure $RUN/tables.png"
