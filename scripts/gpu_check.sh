#!/usr/bin/env bash
# The paper's GPU path in one command, on one CUDA GPU: every stage run for real and measured.
#
#   bash scripts/gpu_check.sh                                  # every step group, into results/gpu_check
#   bash scripts/gpu_check.sh --steps tiny,latency --output_dir results/gpu_check
#
# It needs this repo's Python environment on a CUDA machine: torch with CUDA, the packages of
# requirements.txt (trl, peft, datasets, deepspeed, transformers 5.9.0, faiss, cornac; vllm and
# verl/ray only for the groups that say so), the package itself (`pip install -e . --no-deps`),
# and the Movies data where `python -m siren.data Movies` finds it. It has not run on a GPU yet.
#
# Step groups (--steps, comma-separated; default all of them, in this order):
#   tiny     the tiny pipeline, stages 2-6 on the GPU: a 40-user slice, stage 2, the format warm start,
#            stage 3 (TRL), 4a, 4b, 4c, stage 6 before alignment (eager and compiled), stage 5 under
#            config_Zero2.yaml with --num_processes 1, stage 6 after alignment
#   scale    the real Qwen3-4B shape (random init, saved to disk once): 4a --backend hf on 64 rows,
#            4b on 1,000 rows, stage 5 with ZeRO-2 for 40 steps, stage 6 on the full test split with
#            each AO engine. 4b's input needs reasoning a random model cannot write: the step
#            `synthetic-cot` writes a stage-4a file with a fixed reasoning and each row's own label
#            (and says so in its manifest). No stage 1 here: the prompts carry no sketch.
#   latency  scripts/bench_latency.py on the saved Qwen3-4B shape, CoT forced to 238 tokens, AO at
#            batch 1 and 32, every engine and cache available
#   tests    the GPU-marked tests and the test files that run engines on CUDA
#   vllm     stage 4a --backend vllm on 64 rows, when vllm is importable (else recorded as skipped)
#   verl     stage 3 with verl for 2 steps on the tiny model, when verl, ray and vllm are importable
#   memory   one GRPO step at the Qwen3-4B shape (the random-init model) on this GPU: verl with the offloading
#            OFFLOAD=auto chooses (when verl, ray and vllm are importable), and grpo_trl.py full fine-tuning with
#            --beta 0 and the generate() batch it chooses; each log holds the estimate, the summary the peak
#
# Everything lands in --output_dir: one folder per step, logs/<step>.log, summary.json (per step:
# status, wall seconds, peak GPU memory above what was in use before it, rows or steps per second,
# the card) and the table printed at the end. A failed step is recorded and the rest still run;
# the script exits 1 if any step failed. Groups take minutes each (first compilations included):
# on a machine that limits one command's time, run the groups as separate calls into the same
# --output_dir. Refuses, with one line, a machine without CUDA.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_DIR"
ALL_STEPS=tiny,scale,latency,tests,vllm,verl,memory
OUT=results/gpu_check
STEPS=$ALL_STEPS
CATEGORY=Movies
DATA_ROOT=${SIREN_DATA_DIR:-}
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x "$REPO_DIR/.venv/bin/python" ]] && PYTHON="$REPO_DIR/.venv/bin/python"
fi

die() { echo "error: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --output_dir|--out_dir) [[ $# -ge 2 ]] || die "$1 needs a folder"; OUT=$2; shift 2 ;;
        --steps) [[ $# -ge 2 ]] || die "--steps needs a list, e.g. tiny,latency"; STEPS=$2; shift 2 ;;
        --data_root) [[ $# -ge 2 ]] || die "--data_root needs a folder"; DATA_ROOT=$2; shift 2 ;;
        --category) [[ $# -ge 2 ]] || die "--category needs a name"; CATEGORY=$2; shift 2 ;;
        --python) [[ $# -ge 2 ]] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
IFS=, read -r -a WANTED <<< "$STEPS"
[[ ${#WANTED[@]} -gt 0 ]] || die "--steps is empty; choose from $ALL_STEPS"
for step in "${WANTED[@]}"; do
    [[ ",$ALL_STEPS," == *",$step,"* ]] || die "unknown step group '$step'; choose from $ALL_STEPS"
done
wants() { [[ ",$STEPS," == *",$1,"* ]]; }

"$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null \
    || die "no CUDA device is visible to $PYTHON (torch.cuda.is_available() is false); gpu_check needs one GPU"
# The data root, found as every stage finds it ($SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data).
DATA_ROOT=$("$PYTHON" -m siren.data "$CATEGORY" ${DATA_ROOT:+--data_root "$DATA_ROOT"}) || exit 2

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs"
SUMMARY="$OUT/summary.json"
FAILED=0
# step NAME [--rows N | --steps N] -- COMMAND...: run, measure, record; a failure is counted, not fatal.
step() {
    local name=$1; shift
    "$PYTHON" -m siren.tools.gpu_check run --summary "$SUMMARY" --name "$name" --log "$OUT/logs/$name.log" "$@" || FAILED=$((FAILED + 1))
}
skip() { "$PYTHON" -m siren.tools.gpu_check skip --summary "$SUMMARY" --name "$1" --reason "$2"; }
have() { "$PYTHON" -c "import $1" 2>/dev/null; }
ZERO2=("$PYTHON" -m accelerate.commands.launch --config_file config_Zero2.yaml --num_processes 1)

TINY="$OUT/tiny-qwen3"
if [[ ! -f "$TINY/config.json" ]]; then
    step tiny-model -- "$PYTHON" scripts/make_tiny_model.py --output_dir "$TINY"
fi

if wants tiny; then
    T="$OUT/tiny"
    rm -rf "$T"
    VERL_T="$T/verl/max@10-long@False"
    GRPO_T="$T/ckpt/GRPO_${CATEGORY}_step2"
    step tiny-slice -- "$PYTHON" scripts/slice_data.py --category "$CATEGORY" --data_root "$DATA_ROOT" \
        --num_users 40 --output_root "$T/data"
    step tiny-stage2 -- "$PYTHON" preprocess_grpo.py --category "$CATEGORY" --data_root "$T/data" --max_history 10 \
        --use_long_history False --limit 64 --output_dir "$VERL_T"
    step tiny-warm-start -- "$PYTHON" scripts/warm_start_format.py --model "$TINY" --data_path "$VERL_T" \
        --max_length 1024 --recipe mean --learning_rate 1e-2 --max_steps 60 --output_dir "$T/ckpt/warm_start"
    step tiny-stage3-trl --steps 2 -- env BACKEND=trl PYTHON="$PYTHON" MODEL_PATH="$T/ckpt/warm_start" \
        DATA_DIR="$VERL_T" CATEGORY="$CATEGORY" CKPT_DIR="$T/ckpt" TRAINER_DIR="$T/ckpt/trl" MAX_STEPS=2 \
        ROLLOUT_N=2 BATCH_SIZE=2 MICRO_BATCH_SIZE=2 MAX_RESPONSE_LENGTH=48 TEST_FREQ=0 SAVE_FREQ=0 \
        bash main_grpo_amazon.sh
    step tiny-4a --rows 64 -- "$PYTHON" inference_train_ddp.py --model "$GRPO_T" --data_path "$VERL_T" \
        --split train --max_new_tokens 48 --batch_size 16 --output_dir "$T/cot_train"
    step tiny-4b -- "$PYTHON" extract_last_hidden_ddp.py --model "$GRPO_T" --data_path "$VERL_T" \
        --thinking_path "$T/cot_train" --output_dir "$T/hidden" --only_correct
    step tiny-4c -- "$PYTHON" preprocess_hidden.py --data_path "$VERL_T" --model "$GRPO_T" --output_dir "$T/ao_data"
    for engine in eager compiled; do
        step "tiny-stage6-before-$engine" --rows 64 -- "$PYTHON" inference_ao_ddp.py --model "$GRPO_T" \
            --data_path "$T/ao_data" --split test --engine "$engine" --output_dir "$T/ao_before_$engine"
    done
    step tiny-stage5-zero2 --steps 20 -- "${ZERO2[@]}" train_hidden_mask.py --model "$GRPO_T" \
        --data_path "$T/ao_data" --teacher_hidden_path "$T/hidden" --teacher_mask_path "$T/cot_train/mask.pt" \
        --output_dir "$T/ckpt/AO_${CATEGORY}_HA" --training_ratio 1.0 --max_steps 20 --warmup_steps 2 \
        --eval_steps 10 --save_steps 10 --eval_limit 32
    step tiny-stage6-after --rows 64 -- "$PYTHON" inference_ao_ddp.py --model "$T/ckpt/AO_${CATEGORY}_HA/merged" \
        --data_path "$T/ao_data" --split test --output_dir "$T/ao_after"
fi

# The Qwen3-4B shape, random init, saved once and shared by scale, latency and vllm.
RANDOM_4B="$OUT/random-qwen3-4b"
VERL_FULL="$OUT/verl/max@10-long@False"
if wants scale || wants latency || wants vllm || wants memory; then
    [[ -f "$RANDOM_4B/config.json" ]] || step random-qwen3-4b -- "$PYTHON" -m siren.tools.gpu_check random-model \
        --shape qwen3-4b --tokenizer "$TINY" --output_dir "$RANDOM_4B"
    [[ -f "$VERL_FULL/test.parquet" ]] || step full-stage2 -- "$PYTHON" preprocess_grpo.py --category "$CATEGORY" \
        --data_root "$DATA_ROOT" --max_history 10 --use_long_history False --output_dir "$VERL_FULL"
fi

if wants scale; then
    S="$OUT/scale"
    rm -rf "$S"
    step scale-4a-hf --rows 64 -- "$PYTHON" inference_train_ddp.py --model "$RANDOM_4B" --data_path "$VERL_FULL" \
        --split train --limit 64 --max_new_tokens 128 --batch_size 32 --output_dir "$S/cot_hf"
    step scale-synthetic-cot -- "$PYTHON" -m siren.tools.gpu_check synthetic-cot --model "$RANDOM_4B" \
        --data_path "$VERL_FULL" --split train --limit 1000 --output_dir "$S/cot_synthetic"
    step scale-4b --rows 1000 -- "$PYTHON" extract_last_hidden_ddp.py --model "$RANDOM_4B" --data_path "$VERL_FULL" \
        --thinking_path "$S/cot_synthetic" --limit 1000 --batch_size 16 --dtype bfloat16 --output_dir "$S/hidden"
    step scale-4c -- "$PYTHON" preprocess_hidden.py --data_path "$VERL_FULL" --model "$RANDOM_4B" --limit 1000 \
        --output_dir "$S/ao_data"
    step scale-stage5-zero2 --steps 40 -- "${ZERO2[@]}" train_hidden_mask.py --model "$RANDOM_4B" \
        --data_path "$S/ao_data" --teacher_hidden_path "$S/hidden" --teacher_mask_path "$S/cot_synthetic/mask.pt" \
        --output_dir "$S/AO" --training_ratio 1.0 --max_steps 40 --warmup_steps 0 --eval_steps 40 --save_steps 40 \
        --eval_limit 64 --per_device_train_batch_size 4
    engines=(eager compiled)
    have vllm && engines+=(vllm)
    rows=$("$PYTHON" -c "import pandas; print(len(pandas.read_parquet('$VERL_FULL/test.parquet')))")
    for engine in "${engines[@]}"; do
        step "scale-stage6-$engine" --rows "$rows" -- "$PYTHON" inference_ao_ddp.py --model "$RANDOM_4B" \
            --data_path "$VERL_FULL" --split test --batch_size 32 --engine "$engine" --output_dir "$S/ao_$engine"
    done
    have vllm || skip scale-stage6-vllm "vllm is not installed here"
fi

if wants latency; then
    step latency-qwen3-4b -- "$PYTHON" scripts/bench_latency.py --model "$RANDOM_4B" --data_path "$VERL_FULL" \
        --limit 32 --cot_tokens 238 --ao_batch_sizes 1 32 --output_dir "$OUT/bench_latency" --overwrite
fi

if wants tests; then
    step tests-gpu -- "$PYTHON" -m pytest -q -m gpu tests
    step tests-engines -- "$PYTHON" -m pytest -q tests/test_engines.py tests/test_inference_ao.py tests/test_bench_latency.py
fi

if wants vllm; then
    if have vllm; then
        step vllm-4a --rows 64 -- "$PYTHON" inference_train_ddp.py --backend vllm --model "$RANDOM_4B" \
            --data_path "$VERL_FULL" --split train --limit 64 --max_new_tokens 128 --batch_size 64 --output_dir "$OUT/vllm_4a"
    else
        skip vllm-4a "vllm is not installed here"
    fi
fi

if wants verl; then
    if have verl && have ray && have vllm; then
        V="$OUT/verl_run"
        rm -rf "$V"
        step verl-slice -- "$PYTHON" scripts/slice_data.py --category "$CATEGORY" --data_root "$DATA_ROOT" \
            --num_users 40 --output_root "$V/data"
        step verl-stage2 -- "$PYTHON" preprocess_grpo.py --category "$CATEGORY" --data_root "$V/data" \
            --use_long_history False --limit 64 --output_dir "$V/verl/max@10-long@False"
        step verl-stage3 --steps 2 -- env BACKEND=verl PYTHON="$PYTHON" MODEL_PATH="$TINY" NUM_GPUS=1 \
            DATA_DIR="$V/verl/max@10-long@False" CATEGORY="$CATEGORY" CKPT_DIR="$V/ckpt" TRAINER_DIR="$V/ckpt/verl" \
            MAX_STEPS=2 ROLLOUT_N=2 BATCH_SIZE=4 MICRO_BATCH_SIZE=2 MAX_RESPONSE_LENGTH=48 SAVE_FREQ=2 TEST_FREQ=0 \
            VAL_BEFORE_TRAIN=False bash main_grpo_amazon.sh
    else
        skip verl-stage3 "verl, ray and vllm are not all installed here"
    fi
fi

if wants memory; then
    M="$OUT/memory"
    rm -rf "$M"
    # The paper's settings (BATCH_SIZE=32 x ROLLOUT_N=8, MICRO_BATCH_SIZE=4, 512-token responses, which a random
    # model always fills) on one GPU. The checkpoint keeps the model only (what the merge reads): a 4B checkpoint
    # with AdamW's state is 45 GiB.
    if have verl && have ray && have vllm; then
        step memory-verl-4b --steps 1 -- env BACKEND=verl PYTHON="$PYTHON" MODEL_PATH="$RANDOM_4B" NUM_GPUS=1 \
            DATA_DIR="$VERL_FULL" CATEGORY="$CATEGORY" CKPT_DIR="$M/ckpt" TRAINER_DIR="$M/verl" MAX_STEPS=1 \
            SAVE_FREQ=1 TEST_FREQ=0 VAL_BEFORE_TRAIN=False bash main_grpo_amazon.sh \
            "actor_rollout_ref.actor.checkpoint.save_contents=[model]"
    else
        skip memory-verl-4b "verl, ray and vllm are not all installed here"
    fi
    step memory-trl-4b --steps 1 -- "$PYTHON" grpo_trl.py --model "$RANDOM_4B" --data_path "$VERL_FULL" \
        --output_dir "$M/trl" --max_steps 1 --beta 0 --prompts_per_step 8 --eval_strategy no --save_strategy no
    rm -rf "$M"  # tens of GB of checkpoints; the peaks are in the summary
fi

"$PYTHON" -m siren.tools.gpu_check table --summary "$SUMMARY" | tee "$OUT/summary.txt"
echo "summary: $SUMMARY; logs: $OUT/logs/"
[[ "$FAILED" == 0 ]] || { echo "$FAILED step(s) failed" >&2; exit 1; }
