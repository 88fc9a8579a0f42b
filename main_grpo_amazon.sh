#!/usr/bin/env bash
# Stage 3: GRPO on the stage-2 parquet files, then a merged Hugging Face model in
# ${CKPT_DIR}/GRPO_${DATA_NAME}_step${STEP}.
#
#   MODEL_PATH=ckpt/Qwen3-4B CATEGORY=Movies bash main_grpo_amazon.sh              # verl 0.9.1, all GPUs
#   DRY_RUN=1 MODEL_PATH=ckpt/tiny-qwen3 bash main_grpo_amazon.sh                 # print verl's composed config
#   BACKEND=trl MODEL_PATH=ckpt/tiny-qwen3 DATA_DIR=data/Movies/verl/max@10-long@True \
#       MAX_STEPS=2 ROLLOUT_N=2 BATCH_SIZE=2 MAX_RESPONSE_LENGTH=16 bash main_grpo_amazon.sh   # TRL, 1 node/CPU
#
# Settings (environment variables, defaults in the block below):
#   BACKEND            verl (Ray + vLLM + FSDP, needs GPUs) or trl (TRL GRPOTrainer, one process, CPU or 1 GPU)
#   MODEL_PATH         local base model folder (required)
#   CATEGORY, MAX_HISTORY, USE_LONG_HISTORY   pick DATA_DIR = data/$CATEGORY/verl/max@N-long@BOOL
#   DATA_DIR           folder with train.parquet and val.parquet from preprocess_grpo.py
#   DATA_NAME          names the output: $CKPT_DIR/GRPO_${DATA_NAME}_step$STEP (default: $CATEGORY)
#   CKPT_DIR           where the merged model goes (default: ckpt)
#   NUM_GPUS           GPUs on this node (default: counted with nvidia-smi -L)
#   BATCH_SIZE         prompts per GPU per step (verl data.train_batch_size = BATCH_SIZE * NUM_GPUS)
#   MICRO_BATCH_SIZE   prompts per GPU per forward pass (the *_per_gpu micro-batch keys)
#   ROLLOUT_N          responses sampled per prompt (GRPO group size)
#   LR, KL_COEF        actor learning rate; low_var_kl KL-loss coefficient (TRL: beta)
#   MAX_PROMPT_LENGTH, MAX_RESPONSE_LENGTH    tokens
#   EPOCHS, MAX_STEPS  passes over train.parquet; MAX_STEPS > 0 stops earlier
#   SAVE_FREQ, TEST_FREQ   steps between checkpoints / validation runs on val.parquet
#   LORA_RANK, LORA_ALPHA  0 = full fine-tuning; with verl the adapter is merged into the saved model
#   ATTN_IMPLEMENTATION    verl only: attention of the actor/ref models: sdpa (default; needs no flash-attn) or
#                      flash_attention_2 (only where flash-attn is installed; turns remove-padding on)
#   RESUME_MODE        verl only: disable (default; refuses a TRAINER_DIR that already holds a checkpoint),
#                      auto (resume from its latest checkpoint), or resume_path with RESUME_FROM_PATH=.../global_step_S
#   VAL_BEFORE_TRAIN   verl only: True (verl's default) runs one validation pass before step 1
#   LOGGER             console, or console,wandb
#   PROJECT_NAME, EXPERIMENT_NAME, TRAINER_DIR (raw verl/TRL checkpoints; default ckpt/$BACKEND/$PROJECT_NAME/$EXPERIMENT_NAME)
#   GPU_MEMORY_UTILIZATION (vLLM), OVERWRITE=1 (replace an existing merged model)
#   PYTHON             interpreter (default: the repo's .venv/bin/python when it exists, else python3)
#   DRY_RUN=1          print the config verl would run (python -m verl.trainer.main_ppo ... --cfg job) and exit;
#                      with BACKEND=trl, print the python -m siren.grpo_trl command and exit
# Arguments after the script name are passed on: Hydra overrides for verl, flags of
# `python -m siren.grpo_trl` for BACKEND=trl.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

BACKEND=${BACKEND:-verl}
# The project's venv (make install) has verl; the system python3 usually does not.
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x "$REPO_DIR/.venv/bin/python" ]] && PYTHON="$REPO_DIR/.venv/bin/python"
fi
MODEL_PATH=${MODEL_PATH:-}
CATEGORY=${CATEGORY:-Movies}
MAX_HISTORY=${MAX_HISTORY:-10}
USE_LONG_HISTORY=${USE_LONG_HISTORY:-True}
DATA_DIR=${DATA_DIR:-data/${CATEGORY}/verl/max@${MAX_HISTORY}-long@${USE_LONG_HISTORY}}
DATA_NAME=${DATA_NAME:-${CATEGORY}}
CKPT_DIR=${CKPT_DIR:-ckpt}
BATCH_SIZE=${BATCH_SIZE:-32}
MICRO_BATCH_SIZE=${MICRO_BATCH_SIZE:-4}
ROLLOUT_N=${ROLLOUT_N:-8}
LR=${LR:-1e-6}
KL_COEF=${KL_COEF:-0.001}
MAX_PROMPT_LENGTH=${MAX_PROMPT_LENGTH:-2048}
MAX_RESPONSE_LENGTH=${MAX_RESPONSE_LENGTH:-512}
EPOCHS=${EPOCHS:-2}
MAX_STEPS=${MAX_STEPS:-0}
SAVE_FREQ=${SAVE_FREQ:-20}
TEST_FREQ=${TEST_FREQ:-20}
LORA_RANK=${LORA_RANK:-0}
LORA_ALPHA=${LORA_ALPHA:-32}
ATTN_IMPLEMENTATION=${ATTN_IMPLEMENTATION:-sdpa}
RESUME_MODE=${RESUME_MODE:-disable}
RESUME_FROM_PATH=${RESUME_FROM_PATH:-}
VAL_BEFORE_TRAIN=${VAL_BEFORE_TRAIN:-True}
LOGGER=${LOGGER:-console}
PROJECT_NAME=${PROJECT_NAME:-siren_grpo}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-GRPO_${DATA_NAME}}
TRAINER_DIR=${TRAINER_DIR:-ckpt/${BACKEND}/${PROJECT_NAME}/${EXPERIMENT_NAME}}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.6}
OVERWRITE=${OVERWRITE:-0}
DRY_RUN=${DRY_RUN:-0}
if [[ -z "${NUM_GPUS:-}" ]]; then
    NUM_GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    if [[ "$DRY_RUN" == 1 && "$NUM_GPUS" == 0 ]]; then
        NUM_GPUS=1  # only composes the config, so a machine without GPUs can check it
        echo "DRY_RUN: no GPU found, composing the config for NUM_GPUS=1" >&2
    fi
fi

die() { echo "error: $*" >&2; exit 2; }

# Everything a run needs is checked here, before Ray or a trainer starts.
[[ "$BACKEND" == verl || "$BACKEND" == trl ]] || die "BACKEND must be verl or trl, got '$BACKEND'"
[[ -n "$MODEL_PATH" ]] || die "set MODEL_PATH to a local model folder (e.g. MODEL_PATH=ckpt/tiny-qwen3)"
[[ -f "$MODEL_PATH/config.json" ]] || die "MODEL_PATH=$MODEL_PATH is not a model folder (no config.json)"
for split in train val; do
    [[ -f "$DATA_DIR/$split.parquet" ]] || die "missing parquet split: $DATA_DIR/$split.parquet (run preprocess_grpo.py first)"
done
[[ "$NUM_GPUS" =~ ^[0-9]+$ ]] || die "NUM_GPUS must be a whole number, got '$NUM_GPUS'"
if [[ "$BACKEND" == verl && "$NUM_GPUS" == 0 ]]; then
    die "NUM_GPUS=0: verl needs GPUs; use BACKEND=trl to train on CPU or a single device"
fi
case "$ATTN_IMPLEMENTATION" in
    sdpa|eager) REMOVE_PADDING=False ;;
    flash_attention_2) REMOVE_PADDING=True ;;  # verl's packed (varlen) forward needs flash-attn's kernels
    *) die "ATTN_IMPLEMENTATION must be sdpa, eager or flash_attention_2, got '$ATTN_IMPLEMENTATION'" ;;
esac
case "$RESUME_MODE" in
    disable|auto) ;;
    resume_path) [[ "$RESUME_FROM_PATH" == *global_step_* ]] \
        || die "RESUME_MODE=resume_path needs RESUME_FROM_PATH=<TRAINER_DIR>/global_step_S, got '$RESUME_FROM_PATH'" ;;
    *) die "RESUME_MODE must be disable, auto or resume_path, got '$RESUME_MODE'" ;;
esac
if [[ "$BACKEND" == trl && "$RESUME_MODE" != disable ]]; then
    die "RESUME_MODE=$RESUME_MODE is read by BACKEND=verl only; the TRL backend always starts from MODEL_PATH"
fi
# verl's resume_mode=disable trains from scratch but writes into the same folder, and a run that
# stops before its first save would leave the old latest_checkpointed_iteration.txt to be merged.
if [[ "$BACKEND" == verl && "$DRY_RUN" != 1 && "$RESUME_MODE" == disable && -f "$TRAINER_DIR/latest_checkpointed_iteration.txt" ]]; then
    die "TRAINER_DIR=$TRAINER_DIR already holds a verl checkpoint (step $(tr -d '[:space:]' < "$TRAINER_DIR/latest_checkpointed_iteration.txt")): set RESUME_MODE=auto to resume it, or choose another TRAINER_DIR"
fi
REWARD_FILE="$REPO_DIR/siren/reward.py"
[[ -f "$REWARD_FILE" ]] || die "reward function file not found: $REWARD_FILE"
REPORT_TO=none
[[ "$LOGGER" == *wandb* ]] && REPORT_TO=wandb
OVERWRITE_FLAG=()
[[ "$OVERWRITE" == 1 ]] && OVERWRITE_FLAG=(--overwrite)

if [[ "$BACKEND" == trl ]]; then
    TRL_COMMAND=("$PYTHON" -m siren.grpo_trl \
        --model_path "$MODEL_PATH" --data_dir "$DATA_DIR" --data_name "$DATA_NAME" --ckpt_dir "$CKPT_DIR" \
        --output_dir "$TRAINER_DIR" --epochs "$EPOCHS" --max_steps "$MAX_STEPS" \
        --num_generations "$ROLLOUT_N" --prompts_per_step "$BATCH_SIZE" --prompts_per_micro_batch "$MICRO_BATCH_SIZE" \
        --lr "$LR" --beta "$KL_COEF" --max_prompt_length "$MAX_PROMPT_LENGTH" \
        --max_completion_length "$MAX_RESPONSE_LENGTH" --save_freq "$SAVE_FREQ" --test_freq "$TEST_FREQ" \
        --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA" --report_to "$REPORT_TO" \
        --run_name "$EXPERIMENT_NAME" "${OVERWRITE_FLAG[@]}" "$@")
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%q ' "${TRL_COMMAND[@]}"; echo
        exit 0
    fi
    exec "${TRL_COMMAND[@]}"
fi

# verl: every key below exists in verl 0.9.1's ppo_trainer config (Hydra rejects unknown keys), except
# the one `+` key: model.override_config is an empty open dict there, so adding to it needs `+`.
# verl reads override_config.attn_implementation for the actor and the reference model alike
# (HFModelConfig, verl/workers/config/model.py) and defaults it to flash_attention_2, which needs
# the flash-attn package; PyPI has only its source, which compiles against CUDA (docs/pipeline.md).
# sdpa is torch's own kernel. It goes with use_remove_padding=False: verl's remove-padding path packs
# a micro-batch into one sequence without an attention mask, written for flash-attn's varlen
# kernels; the padded path passes an explicit attention mask, which every implementation honours.
# Batch sizes in verl count prompts; ppo_mini_batch_size = the whole batch gives one update per step.
TRAIN_BATCH_SIZE=$((BATCH_SIZE * NUM_GPUS))
TOTAL_STEPS=()
[[ "$MAX_STEPS" -gt 0 ]] && TOTAL_STEPS=(trainer.total_training_steps="$MAX_STEPS")
RESUME_FROM=()
[[ "$RESUME_MODE" == resume_path ]] && RESUME_FROM=(trainer.resume_from_path="'$RESUME_FROM_PATH'")
VERL_ARGS=(
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=False
    data.train_files="'$DATA_DIR/train.parquet'"
    data.val_files="'$DATA_DIR/val.parquet'"
    data.train_batch_size="$TRAIN_BATCH_SIZE"
    data.max_prompt_length="$MAX_PROMPT_LENGTH"
    data.max_response_length="$MAX_RESPONSE_LENGTH"
    data.filter_overlong_prompts=True
    data.truncation=error
    actor_rollout_ref.model.path="'$MODEL_PATH'"
    +actor_rollout_ref.model.override_config.attn_implementation="$ATTN_IMPLEMENTATION"
    actor_rollout_ref.model.use_remove_padding="$REMOVE_PADDING"
    actor_rollout_ref.model.enable_gradient_checkpointing=True
    actor_rollout_ref.model.lora_rank="$LORA_RANK"
    actor_rollout_ref.model.lora_alpha="$LORA_ALPHA"
    actor_rollout_ref.actor.optim.lr="$LR"
    actor_rollout_ref.actor.ppo_mini_batch_size="$TRAIN_BATCH_SIZE"
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu="$MICRO_BATCH_SIZE"
    actor_rollout_ref.actor.use_kl_loss=True
    actor_rollout_ref.actor.kl_loss_coef="$KL_COEF"
    actor_rollout_ref.actor.kl_loss_type=low_var_kl
    actor_rollout_ref.actor.entropy_coeff=0
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.n="$ROLLOUT_N"
    actor_rollout_ref.rollout.tensor_model_parallel_size=1
    actor_rollout_ref.rollout.gpu_memory_utilization="$GPU_MEMORY_UTILIZATION"
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu="$MICRO_BATCH_SIZE"
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu="$MICRO_BATCH_SIZE"
    reward.custom_reward_function.path="'$REWARD_FILE'"
    reward.custom_reward_function.name=compute_score
    trainer.logger="[${LOGGER}]"
    trainer.project_name="$PROJECT_NAME"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.default_local_dir="'$TRAINER_DIR'"
    trainer.n_gpus_per_node="$NUM_GPUS"
    trainer.nnodes=1
    trainer.total_epochs="$EPOCHS"
    trainer.save_freq="$SAVE_FREQ"
    trainer.test_freq="$TEST_FREQ"
    trainer.val_before_train="$VAL_BEFORE_TRAIN"
    trainer.resume_mode="$RESUME_MODE"
    "${TOTAL_STEPS[@]}"
    "${RESUME_FROM[@]}"
)

if [[ "$DRY_RUN" == 1 ]]; then
    exec "$PYTHON" -m verl.trainer.main_ppo "${VERL_ARGS[@]}" "$@" --cfg job
fi

"$PYTHON" -m verl.trainer.main_ppo "${VERL_ARGS[@]}" "$@"

LATEST_FILE="$TRAINER_DIR/latest_checkpointed_iteration.txt"
[[ -f "$LATEST_FILE" ]] || die "training wrote no checkpoint ($LATEST_FILE missing; is SAVE_FREQ > 0?)"
STEP=$(tr -d '[:space:]' < "$LATEST_FILE")
TARGET="$CKPT_DIR/GRPO_${DATA_NAME}_step${STEP}"
if [[ -e "$TARGET" && "$OVERWRITE" != 1 ]]; then
    die "output already exists: $TARGET (set OVERWRITE=1 to replace it; the verl checkpoint is in $TRAINER_DIR/global_step_$STEP)"
fi
# Merge into a temporary sibling and rename, so an existing $TARGET is always a finished model.
PARTIAL="$CKPT_DIR/.GRPO_${DATA_NAME}_step${STEP}.partial"
rm -rf "$PARTIAL"
"$PYTHON" -m verl.model_merger merge --backend fsdp \
    --local_dir "$TRAINER_DIR/global_step_$STEP/actor" --target_dir "$PARTIAL"
# A LoRA run's adapter is merged into the weights here (verl's merger leaves it beside them).
"$PYTHON" -m siren.grpo_verl "$PARTIAL" backend=verl step="$STEP" model_path="$MODEL_PATH" data_dir="$DATA_DIR" \
    num_gpus="$NUM_GPUS" batch_size="$BATCH_SIZE" rollout_n="$ROLLOUT_N" lr="$LR" kl_coef="$KL_COEF" \
    max_prompt_length="$MAX_PROMPT_LENGTH" max_response_length="$MAX_RESPONSE_LENGTH" epochs="$EPOCHS" \
    lora_rank="$LORA_RANK" lora_alpha="$LORA_ALPHA" attn_implementation="$ATTN_IMPLEMENTATION" \
    resume_mode="$RESUME_MODE" trainer_dir="$TRAINER_DIR" extra_overrides="$*"
rm -rf "$TARGET"
mv "$PARTIAL" "$TARGET"
echo "merged verl step $STEP into $TARGET"
