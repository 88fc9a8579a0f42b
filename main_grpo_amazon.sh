#!/usr/bin/env bash
# Stage 3: GRPO on the stage-2 parquet files, then the merged model ${CKPT_DIR}/GRPO_${DATA_NAME}_step${STEP}.
#
#   MODEL_PATH=ckpt/Qwen3-4B CATEGORY=Movies bash main_grpo_amazon.sh            # verl 0.9.1, every GPU of this node
#   DRY_RUN=1 MODEL_PATH=ckpt/tiny-qwen3 bash main_grpo_amazon.sh               # check and print verl's config
#   NNODES=2 NUM_GPUS=8 MODEL_PATH=ckpt/Qwen3-4B bash main_grpo_amazon.sh       # on a Ray cluster's head node
#   BACKEND=trl MODEL_PATH=ckpt/tiny-qwen3 DATA_DIR=data/Movies/verl/max@10-long@True \
#       MAX_STEPS=2 ROLLOUT_N=2 BATCH_SIZE=1 MICRO_BATCH_SIZE=2 MAX_RESPONSE_LENGTH=16 bash main_grpo_amazon.sh
#
# Settings (environment variables; verl's defaults in the block below, grpo_trl.py has the same ones):
#   BACKEND            verl (Ray + vLLM + FSDP, GPUs) or trl (grpo_trl.py: TRL's GRPOTrainer, one process, CPU or 1 GPU)
#   MODEL_PATH         local base model folder (required)
#   CATEGORY, MAX_HISTORY, USE_LONG_HISTORY   pick the default DATA_DIR, data/$CATEGORY/verl/max@N-long@{True|False}
#   DATA_DIR           folder with train.parquet and val.parquet from preprocess_grpo.py
#   DATA_NAME          names the output: $CKPT_DIR/GRPO_${DATA_NAME}_step$STEP (default: $CATEGORY)
#   CKPT_DIR           where the merged model goes (default: ckpt)
#   NNODES, NUM_GPUS   nodes of the Ray cluster (default 1), GPUs on each (default: counted with nvidia-smi -L)
#   BATCH_SIZE         prompts per GPU per optimizer step: data.train_batch_size = BATCH_SIZE x NUM_GPUS x NNODES
#   MICRO_BATCH_SIZE   sequences (prompt + one response) per GPU per forward/backward pass; BATCH_SIZE x ROLLOUT_N
#                      must be a multiple of it (verl's *_micro_batch_size_per_gpu, TRL's per_device_train_batch_size)
#   ROLLOUT_N          responses sampled per prompt (GRPO group size)
#   LR, KL_COEF        actor learning rate; low_var_kl KL-loss coefficient (TRL: beta)
#   MAX_PROMPT_LENGTH, MAX_RESPONSE_LENGTH    tokens
#   EPOCHS, MAX_STEPS  passes over train.parquet; MAX_STEPS > 0 stops earlier (0 = run the epochs)
#   SAVE_FREQ, TEST_FREQ   steps between checkpoints (>= 1: the last one is merged) / validation runs (0 = none)
#   KEEP_CHECKPOINTS   verl only: checkpoints kept in TRAINER_DIR (default 1: the latest, what merge and resume need)
#   LORA_RANK, LORA_ALPHA  0 = full fine-tuning; the adapter is merged into the saved model
#   OFFLOAD            verl only: auto (default: the lightest offloading whose memory estimate fits), none,
#                      optimizer (AdamW state to host memory between updates) or all (weights too)
#   GPU_MEMORY_GIB     verl only: memory of one card for the estimate (default: nvidia-smi's; 80 in a dry run without GPUs)
#   GPU_MEMORY_UTILIZATION  verl only: vLLM's share of each card (default 0.6)
#   ATTN_IMPLEMENTATION  sdpa (default; needs no flash-attn), eager, or flash_attention_2 (turns verl's remove-padding on)
#   RESUME_MODE        verl only: disable (default; refuses a TRAINER_DIR that already holds a checkpoint),
#                      auto (resume from its latest checkpoint), or resume_path with RESUME_FROM_PATH=.../global_step_S
#   VAL_BEFORE_TRAIN   verl only: True (verl's default) runs one validation pass before step 1
#   LOGGER             console, or console,wandb
#   PROJECT_NAME, EXPERIMENT_NAME, TRAINER_DIR (raw checkpoints; verl default ckpt/verl/$PROJECT_NAME/$EXPERIMENT_NAME)
#   OVERWRITE=1        replace an existing merged model (one of stage 3's; never MODEL_PATH or another stage's folder)
#   PYTHON             interpreter (default: the repo's .venv/bin/python when it exists, else python3)
#   DRY_RUN=1          verl: check the composed config (verl's validate_config too), print it and the memory
#                      estimate, and exit; BACKEND=trl: print the grpo_trl.py command and exit
# Arguments after the script name are passed on: Hydra overrides of keys this launcher does not set (verl),
# flags of grpo_trl.py (TRL). A setting has one value: one given beats the default, and one given twice is refused.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
BACKEND=${BACKEND:-verl}
DRY_RUN=${DRY_RUN:-0}
OVERWRITE=${OVERWRITE:-0}
# The project's venv (make install) has verl; the system python3 usually does not.
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x "$REPO_DIR/.venv/bin/python" ]] && PYTHON="$REPO_DIR/.venv/bin/python"
fi

die() { echo "error: $*" >&2; exit 2; }
for flag in OVERWRITE DRY_RUN; do
    [[ "${!flag}" == 0 || "${!flag}" == 1 ]] || die "$flag must be 0 or 1, got '${!flag}'"
done
OVERWRITE_FLAG=()
[[ "$OVERWRITE" == 1 ]] && OVERWRITE_FLAG=(--overwrite)

if [[ "$BACKEND" == trl ]]; then
    # Only the settings given here become flags: grpo_trl.py's defaults are this launcher's, and it refuses a
    # setting given twice (here and in its --config recipe or a flag) instead of letting one silently win.
    for name in NNODES OFFLOAD GPU_MEMORY_GIB GPU_MEMORY_UTILIZATION KEEP_CHECKPOINTS VAL_BEFORE_TRAIN RESUME_MODE \
            RESUME_FROM_PATH; do
        [[ -z "${!name:-}" ]] || die "$name is read by BACKEND=verl only (BACKEND=trl runs one process on one device)"
    done
    [[ "${NUM_GPUS:-1}" =~ ^[01]$ ]] || die "NUM_GPUS=$NUM_GPUS: BACKEND=trl runs one process on one device"
    TRL_ARGS=()
    given() { [[ -n "${!1:-}" ]]; }
    pass() { if given "$1"; then TRL_ARGS+=("$2=${!1}"); fi; }  # --flag=value: a value may start with "-"
    pass MODEL_PATH --model
    pass DATA_DIR --data_path
    pass CATEGORY --category
    pass MAX_HISTORY --max_history
    pass USE_LONG_HISTORY --use_long_history
    pass DATA_NAME --data_name
    pass CKPT_DIR --output_dir
    pass TRAINER_DIR --checkpoint_dir
    pass EXPERIMENT_NAME --run_name
    pass BATCH_SIZE --prompts_per_step
    pass MICRO_BATCH_SIZE --per_device_train_batch_size
    pass ROLLOUT_N --num_generations
    pass LR --learning_rate
    pass KL_COEF --beta
    pass MAX_PROMPT_LENGTH --max_prompt_length
    pass MAX_RESPONSE_LENGTH --max_completion_length
    pass EPOCHS --num_train_epochs
    [[ "${MAX_STEPS:-}" == 0 ]] || pass MAX_STEPS --max_steps  # 0 = run the epochs, as for verl (TRL: no flag)
    pass LORA_ALPHA --lora_alpha
    pass ATTN_IMPLEMENTATION --attn_implementation
    if given SAVE_FREQ; then
        if [[ "$SAVE_FREQ" == 0 ]]; then TRL_ARGS+=(--save_strategy=no); else pass SAVE_FREQ --save_steps; fi
    fi
    if given TEST_FREQ; then
        if [[ "$TEST_FREQ" == 0 ]]; then TRL_ARGS+=(--eval_strategy=no); else pass TEST_FREQ --eval_steps; fi
    fi
    if given LORA_RANK; then
        if [[ "$LORA_RANK" == 0 ]]; then TRL_ARGS+=(--use_peft=false); else TRL_ARGS+=(--use_peft=true "--lora_r=$LORA_RANK"); fi
    fi
    if given LOGGER; then  # verl's console logger is TRL's stdout; the others are report_to integrations
        IFS=, read -r -a loggers <<< "$LOGGER"
        report_to=()
        for logger in "${loggers[@]}"; do [[ "$logger" == console ]] || report_to+=("$logger"); done
        TRL_ARGS+=(--report_to "${report_to[@]:-none}")
    fi
    given PROJECT_NAME && export WANDB_PROJECT="$PROJECT_NAME"
    TRL_COMMAND=("$PYTHON" "$REPO_DIR/grpo_trl.py" "${TRL_ARGS[@]}" "${OVERWRITE_FLAG[@]}" "$@")
    if [[ "$DRY_RUN" == 1 ]]; then
        printf '%q ' "${TRL_COMMAND[@]}"; echo
        exit 0
    fi
    exec "${TRL_COMMAND[@]}"
fi
[[ "$BACKEND" == verl ]] || die "BACKEND must be verl or trl, got '$BACKEND'"

MODEL_PATH=${MODEL_PATH:-}
# The settings that name the default DATA_DIR: given with a DATA_DIR, its manifest must agree with them.
DATA_DIR_NAMED_BY=()
for name in CATEGORY MAX_HISTORY USE_LONG_HISTORY; do
    if [[ -n "${!name:-}" ]]; then DATA_DIR_NAMED_BY+=("$name=${!name}"); fi
done
CATEGORY=${CATEGORY:-Movies}
MAX_HISTORY=${MAX_HISTORY:-10}
USE_LONG_HISTORY=${USE_LONG_HISTORY:-True}
DATA_DIR=${DATA_DIR:-}   # unset: data/$CATEGORY/verl/max@$MAX_HISTORY-long@..., below
DATA_NAME=${DATA_NAME:-${CATEGORY}}
CKPT_DIR=${CKPT_DIR:-ckpt}
NNODES=${NNODES:-1}
NUM_GPUS=${NUM_GPUS:-}   # unset: counted with nvidia-smi -L, below
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
KEEP_CHECKPOINTS=${KEEP_CHECKPOINTS:-1}
LORA_RANK=${LORA_RANK:-0}
LORA_ALPHA=${LORA_ALPHA:-32}
OFFLOAD=${OFFLOAD:-auto}
GPU_MEMORY_GIB=${GPU_MEMORY_GIB:-}   # unset: the smallest card nvidia-smi reports
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.6}
ATTN_IMPLEMENTATION=${ATTN_IMPLEMENTATION:-sdpa}
RESUME_MODE=${RESUME_MODE:-disable}
RESUME_FROM_PATH=${RESUME_FROM_PATH:-}
VAL_BEFORE_TRAIN=${VAL_BEFORE_TRAIN:-True}
LOGGER=${LOGGER:-console}
PROJECT_NAME=${PROJECT_NAME:-siren_grpo}
EXPERIMENT_NAME=${EXPERIMENT_NAME:-GRPO_${DATA_NAME}}
TRAINER_DIR=${TRAINER_DIR:-ckpt/verl/${PROJECT_NAME}/${EXPERIMENT_NAME}}

# Hydra and `python -m siren.grpo_verl plan` check the numbers; the shell picks what has no key of its own.
[[ -n "$MODEL_PATH" ]] || die "set MODEL_PATH to a local model folder (e.g. MODEL_PATH=ckpt/tiny-qwen3)"
if [[ -z "$NUM_GPUS" ]]; then
    NUM_GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
    if [[ "$DRY_RUN" == 1 && "$NUM_GPUS" == 0 ]]; then
        NUM_GPUS=1  # only composes the config, so a machine without GPUs can check it
        echo "DRY_RUN: no GPU found, composing the config for NUM_GPUS=1" >&2
    fi
fi
[[ "$NUM_GPUS" != 0 ]] || die "NUM_GPUS=0: verl needs GPUs; use BACKEND=trl to train on CPU or a single device"
# The folder name max@N-long@{True|False} is siren.verl_data's (stage 2 writes it); it also checks USE_LONG_HISTORY.
[[ -n "$DATA_DIR" ]] || DATA_DIR=$("$PYTHON" -m siren.verl_data "$CATEGORY" "$MAX_HISTORY" "$USE_LONG_HISTORY") || exit 2
case "$ATTN_IMPLEMENTATION" in
    sdpa|eager) REMOVE_PADDING=False ;;
    flash_attention_2) REMOVE_PADDING=True ;;  # verl's packed (varlen) forward needs flash-attn's kernels
    *) die "ATTN_IMPLEMENTATION must be sdpa, eager or flash_attention_2, got '$ATTN_IMPLEMENTATION'" ;;
esac
TOTAL_STEPS=$MAX_STEPS
[[ "$MAX_STEPS" == 0 ]] && TOTAL_STEPS=null  # run the epochs
RESUME_FROM=null
[[ -n "$RESUME_FROM_PATH" ]] && RESUME_FROM="'$RESUME_FROM_PATH'"

# verl: every key below exists in verl 0.9.1's ppo_trainer config (Hydra rejects unknown keys), except
# the one `+` key: model.override_config is an empty open dict there, so adding to it needs `+`.
# verl reads override_config.attn_implementation for the actor and the reference model alike
# (HFModelConfig, verl/workers/config/model.py) and defaults it to flash_attention_2, which needs
# the flash-attn package; PyPI has only its source, which compiles against CUDA (docs/pipeline.md).
# sdpa is torch's own kernel. It goes with use_remove_padding=False: verl's remove-padding path packs
# a micro-batch into one sequence without an attention mask, written for flash-attn's varlen
# kernels; the padded path passes an explicit attention mask, which every implementation honours.
# data.train_batch_size, ppo_mini_batch_size and the offload keys come from the plan below.
VERL_ARGS=(
    algorithm.adv_estimator=grpo
    algorithm.use_kl_in_reward=False
    data.train_files="'$DATA_DIR/train.parquet'"
    data.val_files="'$DATA_DIR/val.parquet'"
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
    reward.custom_reward_function.path="'$REPO_DIR/siren/reward.py'"
    reward.custom_reward_function.name=compute_score
    trainer.logger="[${LOGGER}]"
    trainer.project_name="$PROJECT_NAME"
    trainer.experiment_name="$EXPERIMENT_NAME"
    trainer.default_local_dir="'$TRAINER_DIR'"
    trainer.nnodes="$NNODES"
    trainer.n_gpus_per_node="$NUM_GPUS"
    trainer.total_epochs="$EPOCHS"
    trainer.total_training_steps="$TOTAL_STEPS"
    trainer.save_freq="$SAVE_FREQ"
    trainer.max_actor_ckpt_to_keep="$KEEP_CHECKPOINTS"
    trainer.test_freq="$TEST_FREQ"
    trainer.val_before_train="$VAL_BEFORE_TRAIN"
    trainer.resume_mode="$RESUME_MODE"
    trainer.resume_from_path="$RESUME_FROM"
)

PLAN_ARGS=(--batch_size "$BATCH_SIZE" --offload "$OFFLOAD" --gpu_memory_gib "$GPU_MEMORY_GIB" --data_name "$DATA_NAME"
           --data_dir_named_by "${DATA_DIR_NAMED_BY[@]}"
           --launcher "${VERL_ARGS[@]}" --user "$@")
if [[ "$DRY_RUN" == 1 ]]; then
    exec "$PYTHON" -m siren.grpo_verl plan --dry_run "${PLAN_ARGS[@]}"
fi
PLANNED=$("$PYTHON" -m siren.grpo_verl plan "${PLAN_ARGS[@]}") || exit 2
read -r -a PLANNED <<< "$PLANNED"

"$PYTHON" -m verl.trainer.main_ppo "${VERL_ARGS[@]}" "${PLANNED[@]}" "$@"

# The merge, on this node: TRAINER_DIR must hold every rank's shard (a filesystem all nodes share).
STEP=$("$PYTHON" -m siren.grpo_verl latest --trainer_dir "$TRAINER_DIR" --output_dir "$CKPT_DIR" \
    --model_path "$MODEL_PATH" --data_dir "$DATA_DIR" \
    --data_name "$DATA_NAME" "${OVERWRITE_FLAG[@]}") || exit 2
TARGET="$CKPT_DIR/GRPO_${DATA_NAME}_step${STEP}"
PARTIAL="$CKPT_DIR/.GRPO_${DATA_NAME}_step${STEP}.partial"  # renamed once complete: $TARGET is always finished
rm -rf "$PARTIAL"
"$PYTHON" -m verl.model_merger merge --backend fsdp \
    --local_dir "$TRAINER_DIR/global_step_$STEP/actor" --target_dir "$PARTIAL"
"$PYTHON" -m siren.grpo_verl finish "$PARTIAL" backend=verl step="$STEP" model_path="$MODEL_PATH" \
    data_dir="$DATA_DIR" nnodes="$NNODES" num_gpus="$NUM_GPUS" batch_size="$BATCH_SIZE" \
    micro_batch_size="$MICRO_BATCH_SIZE" rollout_n="$ROLLOUT_N" lr="$LR" kl_coef="$KL_COEF" \
    max_prompt_length="$MAX_PROMPT_LENGTH" max_response_length="$MAX_RESPONSE_LENGTH" epochs="$EPOCHS" \
    lora_rank="$LORA_RANK" lora_alpha="$LORA_ALPHA" attn_implementation="$ATTN_IMPLEMENTATION" \
    resume_mode="$RESUME_MODE" trainer_dir="$TRAINER_DIR" planned="${PLANNED[*]}" extra_overrides="$*"
rm -rf "$TARGET"
mv "$PARTIAL" "$TARGET"
echo "merged verl step $STEP into $TARGET"
