#!/usr/bin/env bash
# The whole SIREN pipeline, stages 1-6, on CPU on a slice of the real Movies data, then the paper's
# tables. Two profiles, one pipeline:
#
#   PROFILE=tiny (make demo)       the tiny random Qwen3 (real Qwen3 vocabulary): about 4 minutes;
#                                  the numbers measure plumbing, not SIREN.
#   PROFILE=real (make demo-real)  SmolLM2-135M-Instruct, a real pretrained model (make real-model):
#                                  the paper's table at small scale; sized for 45 minutes, 43 measured on 2 idle cores.
#
#   bash scripts/demo.sh                                          # PROFILE=tiny, into results/demo/
#   PROFILE=real bash scripts/demo.sh                             # into results/demo-real/
#   DATA_ROOT=/path/to/data NUM_USERS=100 LIMIT=100 RUN=results/demo100 bash scripts/demo.sh
#
# Every setting below is an environment variable; the profile only picks the defaults. What lands
# in $RUN: data/ (the slice), sketch/, verl/ (stage 2), ao_data/ (4c), ckpt/ (warm start, GRPO,
# the two stage-5 runs), cot_test/ and cot_train/ (4a), hidden/ (4b), ao_zero_shot/, ao_warm/,
# ao_before/, ao_after/, ao_ce_only/ (stage 6 on each model), paired/ (SIREN-AO's per-row errors
# against AO before alignment and w/o HA: scripts/paired_errors.py), baselines/, bench_latency/, the
# GRPO and alignment train logs, timings.json, and the tables (tables.md, *.csv, tables.png).
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"

PY=${PYTHON:-$REPO_DIR/.venv/bin/python}
PROFILE=${PROFILE:-tiny}
CATEGORY=${CATEGORY:-Movies}
DATA_ROOT=${DATA_ROOT:-}
CACHE_DIR=${CACHE_DIR:-.cache/embeddings}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# glibc serves each block above its mmap threshold (32 MB at most) with a fresh mapping and unmaps it when
# freed, so on a CPU every large activation (a packed batch's MLP, the logits) faults in zeroed pages. Keeping
# freed memory in the heap: stage 6 about 20% faster, 4a 15%, stage 5 5% (docs/benchmarks.md).
# A setting of this run, not of the stages; set either variable to override it.
export MALLOC_MMAP_MAX_=${MALLOC_MMAP_MAX_:-0} MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-4611686018427387904}

die() { echo "error: $*" >&2; exit 2; }

# Defaults per profile. Why the real profile's sizes: docs/benchmarks.md ("make demo-real").
case "$PROFILE" in
    tiny)
        D_MODEL=ckpt/tiny-qwen3; D_RUN=results/demo
        D_NUM_USERS=200; D_LIMIT=200; D_TRAIN_ROWS=200; D_DTYPE=float32
        # The random model learns only the one-line recipe, and only at a high learning rate.
        D_WARM_RECIPE=mean; D_WARM_LR=1e-2; D_WARM_STEPS=60; D_WARM_ROWS=64; D_WARM_BATCH=8; D_WARM_MIN_FORMAT=0.9
        D_GRPO_STEPS=2; D_GRPO_PROMPTS=2; D_ROLLOUT_N=2; D_GRPO_MICRO=4; D_GRPO_LR=1e-6; D_GRPO_KL=0.001; D_GRPO_EVAL_ROWS=4
        D_MAX_NEW_TOKENS=40; D_COT_BATCH=16; D_ALIGN_STEPS=20; D_ALIGN_LR=1e-4; D_ALIGN_BATCH=4; D_LORA_R=8; D_ALIGN_BF16=false; D_WARM_BF16=false; D_GRPO_BF16=false
        D_BENCH_SAMPLES=4; D_BENCH_COT_TOKENS=64; D_WARM_POOL=; D_WARM_CHECK_ROWS=32; D_ALIGN_EVAL_ROWS=32
        ;;
    real)
        D_MODEL=ckpt/smollm2-135m-instruct; D_RUN=results/demo-real
        D_NUM_USERS=200; D_LIMIT=200; D_TRAIN_ROWS=300; D_WARM_POOL=400; D_DTYPE=bfloat16
        D_WARM_RECIPE=counted; D_WARM_LR=2e-4; D_WARM_STEPS=24; D_WARM_ROWS=96; D_WARM_BATCH=4; D_WARM_MIN_FORMAT=0.9
        D_GRPO_STEPS=3; D_GRPO_PROMPTS=4; D_ROLLOUT_N=4; D_GRPO_MICRO=4; D_GRPO_LR=1e-6; D_GRPO_KL=0; D_GRPO_EVAL_ROWS=8
        D_MAX_NEW_TOKENS=96; D_COT_BATCH=32; D_ALIGN_STEPS=32; D_ALIGN_LR=1e-3; D_ALIGN_BATCH=4; D_LORA_R=8; D_ALIGN_BF16=true; D_WARM_BF16=true; D_GRPO_BF16=true
        D_BENCH_SAMPLES=4; D_BENCH_COT_TOKENS=64; D_WARM_CHECK_ROWS=16; D_ALIGN_EVAL_ROWS=16
        ;;
    *) die "PROFILE must be tiny or real, got '$PROFILE'" ;;
esac
MODEL=${MODEL:-$D_MODEL}                        # the untouched base model
RUN=${RUN:-$D_RUN}
NUM_USERS=${NUM_USERS:-$D_NUM_USERS}            # users in the slice (all their rows)
LIMIT=${LIMIT:-$D_LIMIT}                        # rows per split kept by stage 2 (test and valid: one per user)
TRAIN_ROWS=${TRAIN_ROWS:-$D_TRAIN_ROWS}         # train rows 4a answers (the first ones): the teacher's candidates for 4b/5
WARM_POOL=${WARM_POOL:-${D_WARM_POOL:-$TRAIN_ROWS}}  # train rows stage 2 keeps (at least TRAIN_ROWS): the warm start's pool
TRAIN_PER_USER=${TRAIN_PER_USER:-}              # stage 2 keeps each user's K latest train rows (empty: all rows)
DTYPE=${DTYPE:-$D_DTYPE}                        # inference dtype of 4a, 4b and stage 6
WARM_RECIPE=${WARM_RECIPE:-$D_WARM_RECIPE}      # the warm start's reasoning (scripts/warm_start_format.py)
WARM_LR=${WARM_LR:-$D_WARM_LR}
WARM_STEPS=${WARM_STEPS:-$D_WARM_STEPS}
WARM_ROWS=${WARM_ROWS:-$D_WARM_ROWS}            # train rows spread over the split (many users)
WARM_BATCH=${WARM_BATCH:-$D_WARM_BATCH}
WARM_MIN_FORMAT=${WARM_MIN_FORMAT:-$D_WARM_MIN_FORMAT}
WARM_BF16=${WARM_BF16:-$D_WARM_BF16}            # the warm start under bf16 autocast (float32 weights)
WARM_CHECK_ROWS=${WARM_CHECK_ROWS:-$D_WARM_CHECK_ROWS}  # rows of the warm start's greedy format check
GRPO_STEPS=${GRPO_STEPS:-$D_GRPO_STEPS}
GRPO_PROMPTS=${GRPO_PROMPTS:-$D_GRPO_PROMPTS}   # prompts per GRPO step
ROLLOUT_N=${ROLLOUT_N:-$D_ROLLOUT_N}            # responses per prompt
GRPO_MICRO=${GRPO_MICRO:-$D_GRPO_MICRO}         # sequences per forward/backward (16 at once took 19 GB on the real model)
GRPO_LR=${GRPO_LR:-$D_GRPO_LR}
GRPO_KL=${GRPO_KL:-$D_GRPO_KL}                  # KL coefficient (TRL's beta); 0 needs no reference model
GRPO_EVAL_ROWS=${GRPO_EVAL_ROWS:-$D_GRPO_EVAL_ROWS}  # held-out (valid) rows of GRPO's learning curve, every step
GRPO_BF16=${GRPO_BF16:-$D_GRPO_BF16}            # GRPO's forward/backward under bf16 autocast (float32 weights and Adam)
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-$D_MAX_NEW_TOKENS}
COT_BATCH=${COT_BATCH:-$D_COT_BATCH}            # 4a's batch (decoding is per-step overhead: bigger is cheaper)
ALIGN_STEPS=${ALIGN_STEPS:-$D_ALIGN_STEPS}
ALIGN_LR=${ALIGN_LR:-$D_ALIGN_LR}
ALIGN_BATCH=${ALIGN_BATCH:-$D_ALIGN_BATCH}
LORA_R=${LORA_R:-$D_LORA_R}
ALIGN_EVAL_ROWS=${ALIGN_EVAL_ROWS:-$D_ALIGN_EVAL_ROWS}  # held-out rows of stage 5's evaluations
ALIGN_BF16=${ALIGN_BF16:-$D_ALIGN_BF16}         # stage 5 in bf16 (1.6x faster on a CPU with avx512_bf16)
BENCH_SAMPLES=${BENCH_SAMPLES:-$D_BENCH_SAMPLES}
BENCH_COT_TOKENS=${BENCH_COT_TOKENS:-$D_BENCH_COT_TOKENS}   # the paper's CoT averages 238 tokens

# The data root, found as every stage finds it ($SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data).
DATA_ROOT=$("$PY" -m siren.data "$CATEGORY" ${DATA_ROOT:+--data_root "$DATA_ROOT"}) || exit 2
if [[ ! -f "$MODEL/config.json" ]]; then
    [[ "$PROFILE" == real ]] && die "no model at $MODEL; build it with: make real-model"
    die "no model at $MODEL; build it with: $PY scripts/make_tiny_model.py --output_dir $MODEL"
fi
[[ -n "$RUN" && "$RUN" != "/" && "$RUN" != "." ]] || die "RUN must name the demo's own output folder"
for knob in WARM_BF16 GRPO_BF16 ALIGN_BF16; do
    [[ "${!knob}" == true || "${!knob}" == false ]] || die "$knob must be true or false, got '${!knob}'"
done

VERL="$RUN/verl/max@10-long@True"
AO_DATA="$RUN/ao_data"
WARM="$RUN/ckpt/warm_start"
GRPO="$RUN/ckpt/GRPO_${CATEGORY}_step${GRPO_STEPS}"
SLICE="$RUN/data"
AO=(--engine eager --batch_size "$COT_BATCH" --dtype "$DTYPE")   # stage 6, the same way for every model and as 4a
AO_ROWS=$(( TRAIN_ROWS > LIMIT ? TRAIN_ROWS : LIMIT ))  # 4c's rows per split: stage 5's train rows are 4a's
SPLIT_ROWS=$(( WARM_POOL > AO_ROWS ? WARM_POOL : AO_ROWS ))
STEPS=16
START=$SECONDS
STEP_START=$SECONDS
step_no=0
TIMINGS=()
step() {
    if (( step_no > 0 )); then TIMINGS+=("$STEP_NAME=$((SECONDS - STEP_START))"); fi
    step_no=$((step_no + 1))
    STEP_NAME=$1
    STEP_START=$SECONDS
    printf '\n\033[1m[%d/%d] %s\033[0m  (%ds elapsed)\n' "$step_no" "$STEPS" "$1" "$((SECONDS - START))"
}

rm -rf "$RUN"
mkdir -p "$RUN"
echo "SIREN demo ($PROFILE): data $DATA_ROOT/$CATEGORY, model $MODEL, $LIMIT rows per split, outputs in $RUN/"

step "slice: the first $NUM_USERS users of $DATA_ROOT/$CATEGORY"
"$PY" scripts/slice_data.py --category "$CATEGORY" --data_root "$DATA_ROOT" --num_users "$NUM_USERS" --output_root "$SLICE"

step "stage 1: interest sketch (MiniLM embeddings, K=20 topics)"
"$PY" generate_interest_sketch.py --category "$CATEGORY" --data_root "$SLICE" \
    --encoder_model minilm --cache_dir "$CACHE_DIR" --tokenizer "$MODEL" --output_dir "$RUN/sketch"

step "stage 2: verl parquet files + prompt-token report"
"$PY" preprocess_grpo.py --category "$CATEGORY" --data_root "$SLICE" --max_history 10 \
    --use_long_history True --sketch_path "$RUN/sketch/user_feature.jsonl" --tokenizer "$MODEL" \
    --limit "$SPLIT_ROWS" ${TRAIN_PER_USER:+--train_rows_per_user "$TRAIN_PER_USER"} --output_dir "$VERL"
cp "$VERL/prompt_stats.json" "$VERL/prompt_tokens_test.npz" "$RUN/"

# 4c renders the answer-only prompts once: every later model keeps the base model's tokenizer.
step "stage 4c: answer-only prompt/completion dataset; stage 6 on the untouched model (zero-shot)"
"$PY" preprocess_hidden.py --data_path "$VERL" --model "$MODEL" --limit "$AO_ROWS" --output_dir "$AO_DATA"
"$PY" inference_ao_ddp.py --model "$MODEL" --data_path "$AO_DATA" --split test --limit "$LIMIT" "${AO[@]}" \
    --output_dir "$RUN/ao_zero_shot"

step "format warm start ($WARM_RECIPE recipe: stands in for a pretrained model's <think>/<answer>)"
"$PY" scripts/warm_start_format.py --model "$MODEL" --data_path "$VERL" --max_length 1024 --recipe "$WARM_RECIPE" \
    --learning_rate "$WARM_LR" --max_steps "$WARM_STEPS" --limit "$WARM_ROWS" --per_device_train_batch_size "$WARM_BATCH" \
    --check_limit "$WARM_CHECK_ROWS" \
    --max_new_tokens "$MAX_NEW_TOKENS" --min_format_rate "$WARM_MIN_FORMAT" --output_dir "$WARM" \
    $([[ "$WARM_BF16" == true ]] && echo --bf16)

step "stage 6 on the warm start"
"$PY" inference_ao_ddp.py --model "$WARM" --data_path "$AO_DATA" --split test --limit "$LIMIT" "${AO[@]}" \
    --output_dir "$RUN/ao_warm"

step "stage 3: GRPO, TRL backend, $GRPO_STEPS steps of $GRPO_PROMPTS prompts x $ROLLOUT_N responses"
BACKEND=trl PYTHON="$PY" MODEL_PATH="$WARM" CATEGORY="$CATEGORY" DATA_DIR="$VERL" \
    CKPT_DIR="$RUN/ckpt" TRAINER_DIR="$RUN/ckpt/trl" MAX_STEPS="$GRPO_STEPS" ROLLOUT_N="$ROLLOUT_N" \
    BATCH_SIZE="$GRPO_PROMPTS" MICRO_BATCH_SIZE="$GRPO_MICRO" LR="$GRPO_LR" KL_COEF="$GRPO_KL" \
    MAX_RESPONSE_LENGTH="$MAX_NEW_TOKENS" \
    TEST_FREQ=1 SAVE_FREQ=0 bash main_grpo_amazon.sh --eval_limit "$GRPO_EVAL_ROWS" \
    --num_generations_eval 1 --gradient_checkpointing false --bf16 "$GRPO_BF16"
cp "$GRPO/train_log.jsonl" "$RUN/grpo_train_log.jsonl"

step "stage 4a: CoT answers of the GRPO model (test rows: the CoT table row; $TRAIN_ROWS train rows: the teacher)"
"$PY" inference_train_ddp.py --model "$GRPO" --data_path "$VERL" --split test --limit "$LIMIT" --dtype "$DTYPE" \
    --max_new_tokens "$MAX_NEW_TOKENS" --batch_size "$COT_BATCH" --output_dir "$RUN/cot_test"
"$PY" inference_train_ddp.py --model "$GRPO" --data_path "$VERL" --split train --limit "$TRAIN_ROWS" --dtype "$DTYPE" \
    --max_new_tokens "$MAX_NEW_TOKENS" --batch_size "$COT_BATCH" --output_dir "$RUN/cot_train"

step "stage 6 on the GRPO model (answer-only before alignment)"
"$PY" inference_ao_ddp.py --model "$GRPO" --data_path "$AO_DATA" --split test --limit "$LIMIT" "${AO[@]}" \
    --output_dir "$RUN/ao_before"

step "stage 4b: teacher hidden states at <answer> (rows whose CoT was exactly right)"
"$PY" extract_last_hidden_ddp.py --model "$GRPO" --data_path "$VERL" --limit "$TRAIN_ROWS" --dtype "$DTYPE" \
    --thinking_path "$RUN/cot_train" --output_dir "$RUN/hidden" --only_correct

ALIGN=(--model "$GRPO" --data_path "$AO_DATA" --teacher_hidden_path "$RUN/hidden"
       --teacher_mask_path "$RUN/cot_train/mask.pt" --training_ratio 1.0 --max_steps "$ALIGN_STEPS"
       --learning_rate "$ALIGN_LR" --per_device_train_batch_size "$ALIGN_BATCH" --lora_r "$LORA_R"
       --warmup_steps "$(( ALIGN_STEPS / 10 ))" --eval_steps "$(( ALIGN_STEPS / 4 > 0 ? ALIGN_STEPS / 4 : 1 ))"
       --save_steps "$ALIGN_STEPS" --eval_limit "$ALIGN_EVAL_ROWS" --logging_steps 1 --bf16 "$ALIGN_BF16")
step "stage 5: hidden-state alignment (LoRA on K/V, cosine, kd_ratio 1.0: SIREN's HA)"
"$PY" train_hidden_mask.py "${ALIGN[@]}" --kd_ratio 1.0 --output_dir "$RUN/ckpt/AO_${CATEGORY}_HA"
cp "$RUN/ckpt/AO_${CATEGORY}_HA/train_log.jsonl" "$RUN/alignment_train_log.jsonl"

step "stage 5 ablation: the same rows and steps with the cross-entropy term alone (kd_ratio 0.0: w/o HA)"
"$PY" train_hidden_mask.py "${ALIGN[@]}" --kd_ratio 0.0 --output_dir "$RUN/ckpt/AO_${CATEGORY}_CE"
cp "$RUN/ckpt/AO_${CATEGORY}_CE/train_log.jsonl" "$RUN/alignment_ce_only_train_log.jsonl"

step "stage 6 on the aligned model (SIREN-AO) and on the ablation"
"$PY" inference_ao_ddp.py --model "$RUN/ckpt/AO_${CATEGORY}_HA/merged" --data_path "$AO_DATA" --split test \
    --limit "$LIMIT" "${AO[@]}" --output_dir "$RUN/ao_after"
"$PY" inference_ao_ddp.py --model "$RUN/ckpt/AO_${CATEGORY}_CE/merged" --data_path "$AO_DATA" --split test \
    --limit "$LIMIT" "${AO[@]}" --output_dir "$RUN/ao_ce_only"
# Is SIREN-AO's lead more than noise? The per-row differences of its errors on the same rows.
"$PY" scripts/paired_errors.py "$RUN/ao_after" "$RUN/ao_before" --out_json "$RUN/paired/after_vs_before.json"
"$PY" scripts/paired_errors.py "$RUN/ao_after" "$RUN/ao_ce_only" --out_json "$RUN/paired/after_vs_ce_only.json"

step "baselines (cornac), fitted on the slice's train split, scored on the same test rows"
"$PY" scripts/baselines.py --category "$CATEGORY" --data_root "$SLICE" --limit "$LIMIT" --output_dir "$RUN/baselines"

step "latency: AO (eager, compiled) vs CoT on the same prompts (CoT forced to $BENCH_COT_TOKENS tokens)"
# On a CPU the compiled engine uses aot_eager (static-shape capture, no code generation): the GPU
# path's shapes and padding without inductor's minutes of compiling; it is not faster here.
"$PY" scripts/bench_latency.py --model "$GRPO" --data_path "$VERL" --limit "$BENCH_SAMPLES" --warmup 1 \
    --cot_tokens "$BENCH_COT_TOKENS" --ao_engines eager compiled --compile_backend aot_eager \
    --output_dir "$RUN/bench_latency"

step "tables"
TIMINGS+=("$STEP_NAME=$((SECONDS - STEP_START))")
"$PY" - "$RUN/timings.json" "$PROFILE" "$((SECONDS - START))" "${TIMINGS[@]}" <<'EOF'
import json, os, platform, sys
from siren.io import atomic_write_json

path, profile, total, *steps = sys.argv[1:]
atomic_write_json(path, {
    "run": os.path.dirname(path), "profile": profile, "total_seconds": int(total),
    "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
    "steps": [{"step": name, "seconds": float(seconds)} for name, seconds in (s.rsplit("=", 1) for s in steps)],
})
EOF
"$PY" scripts/make_tables.py --run_dir "$RUN"
echo
echo "demo ($PROFILE) finished in $((SECONDS - START))s: tables in $RUN/tables/tables.md (+ CSVs), figure $RUN/tables/tables.png"
