"""Stage 5, hidden-state alignment: the stage's work, from checked settings to its model folders.

    validate               the run folder, the checkpoint folder and --model, before anything loads
    load_alignment_inputs  4c rows, 4a mask, 4b teacher states, checked against --model and tokenized
    train_alignment        LoRA trained by the HiddenAlignmentTrainer; a failure leaves no folder it made
    save_adapter, save_merged   the model folders it writes

The parts live in their own modules: settings (`siren.alignment_config`), losses and the aligned
position in plain torch (`siren.alignment_losses`), row selection, tokenization and the collator
(`siren.alignment_data`), the trainer (`siren.alignment_trainer`), the checkpoint folder and its
settings record (`siren.alignment_checkpoints`), LoRA targets and the float32 merge (`siren.lora`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siren import SirenError
from siren.alignment_checkpoints import CheckpointFolder
from siren.alignment_config import AlignmentArguments, resolve_run_dir

# --------------------------------------------------------------------------------------------------
# The schedule: how many optimizer steps, and how many of them warm up


@dataclass(frozen=True)
class Schedule:
    """The optimizer steps a run will make, as the HF Trainer counts them (printed before training)."""

    rows: int
    per_device: int
    processes: int
    accumulation: int
    steps_per_epoch: int
    optimizer_steps: int
    warmup_steps: int
    epochs: float | None        # None when --max_steps decides

    def summary(self) -> str:
        rows_per_step = self.per_device * self.processes * self.accumulation
        length = (f"{self.epochs:g} epoch(s) of {self.steps_per_epoch}" if self.epochs is not None
                  else "--max_steps")
        return (f"{self.optimizer_steps} optimizer steps ({length}; {self.rows} rows, {self.per_device} per device x "
                f"{self.processes} process(es) x {self.accumulation} accumulation = {rows_per_step} rows per step), "
                f"{self.warmup_steps} of them warm-up")


def training_schedule(n_rows: int, config, processes: int) -> Schedule:
    """Optimizer steps and warm-up steps of a run on `n_rows` rows over `processes` processes.

    accelerate gives each process ceil(n_rows / (per_device * processes)) batches (the last ones
    padded with repeated rows), the Trainer makes ceil(batches / accumulation) optimizer steps per
    epoch and ceil(epochs * that) in all unless --max_steps is set (-1: unset), and warms up for
    `config.get_warmup_steps` of them (a --warmup_steps below 1 is a fraction of the steps).
    """
    per_device, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    batches = math.ceil(n_rows / (per_device * processes))
    per_epoch = max(math.ceil(batches / accumulation), 1)
    by_epochs = config.max_steps is None or config.max_steps < 0
    steps = math.ceil(config.num_train_epochs * per_epoch) if by_epochs else int(config.max_steps)
    return Schedule(n_rows, per_device, processes, accumulation, per_epoch, steps, config.get_warmup_steps(steps),
                    config.num_train_epochs if by_epochs else None)


# --------------------------------------------------------------------------------------------------
# Before anything loads


def validate(stage: AlignmentArguments, config):
    """(the run folder's StageOutputs, `model_record` of --model, the checkpoint folder), on every
    process, before anything loads. The run folder holds adapter/, merged/, train_log.jsonl and
    manifest.json, all together or none; the trainer's checkpoints go to <output_dir>/checkpoints,
    with the settings of the run that made them. Refused: finished outputs in the run folder without
    --overwrite, a run folder among the inputs, checkpoints of another run
    (`siren.alignment_checkpoints`), inputs whose manifests say they are another stage's or another
    split's than train, and a --model without a config or weights. The settings' own ranges were
    checked when they were parsed."""
    from siren.cot_results import STAGE_4A_WRITERS
    from siren.manifest import check_input_manifest
    from siren.modeling import model_record
    from siren.outputs import StageOutputs

    run_dir = resolve_run_dir(stage, config)
    outputs = StageOutputs(run_dir, ["adapter", "merged", "train_log.jsonl"], script="train_hidden_mask.py",
                           inputs=[stage.model, stage.data_path, stage.teacher_hidden_path, stage.teacher_mask_path,
                                   stage.teacher_index_path], overwrite=stage.overwrite).check()
    check_input_manifest(stage.data_path, made_by="preprocess_hidden.py", flag="--data_path")
    trains_on = "stage 5 trains on the train split"
    check_input_manifest(stage.teacher_hidden_path, made_by="extract_last_hidden_ddp.py", flag="--teacher_hidden_path",
                         expect={"split": ("train", trains_on)})
    check_input_manifest(stage.teacher_mask_path, made_by=STAGE_4A_WRITERS, flag="--teacher_mask_path",
                         expect={"split": ("train", trains_on)})
    if not (Path(stage.model) / "config.json").is_file():
        raise SirenError(f"--model {stage.model} holds no model (no config.json)")
    base = model_record(stage.model)
    if base["weights_digest"] is None:
        raise SirenError(f"--model {stage.model} holds no weights (no .safetensors or .bin file)")
    return outputs, base, CheckpointFolder.check(stage, config)


# --------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class AlignmentInputs:
    """Everything stage 5 trains on, checked: tokenized rows, teacher states, counts for the manifest."""

    model_config: Any
    tokenizer: Any
    rating_ids: dict[int, int]
    train_dataset: Any
    eval_dataset: Any
    teacher: Any
    counts: dict
    notes: list[str]


def load_alignment_inputs(stage: AlignmentArguments, base: dict) -> AlignmentInputs:
    """Read and check stage 5's inputs, cheapest first, after `validate`; `base` is
    `model_record(stage.model)`.

    Refused in one line: a --model tokenizer without single-token ratings; 4c prompts built
    with another tokenizer or 4b states extracted with another model (their manifests); a mask or
    teacher file that does not fit (siren.cot_results.load_mask, TeacherStates); non-finite teacher states
    in the selected rows; no row that fits --max_length. Missing upstream manifests are notes.
    """
    from transformers import AutoConfig

    from siren.alignment_data import select_training_rows, tokenize_ao_split
    from siren.answer_only_data import load_ao_dataset
    from siren.cot_results import load_mask
    from siren.modeling import check_upstream_model
    from siren.teacher_hidden import TeacherStates
    from siren.tokenization import load_tokenizer, rating_token_ids

    model_config = AutoConfig.from_pretrained(stage.model)
    tokenizer = load_tokenizer(stage.model, padding_side="right")
    ratings = rating_token_ids(tokenizer)
    notes = [check_upstream_model(stage.data_path, base, parts=("tokenizer",), made_by="preprocess_hidden.py",
                                  what=f"the answer-only prompts in {stage.data_path} were built with the tokenizer of")]
    dataset_dict = load_ao_dataset(stage.data_path)
    n_train = len(dataset_dict["train"])
    mask = load_mask(stage.teacher_mask_path, n_train)
    teacher = TeacherStates(stage.teacher_hidden_path, stage.teacher_index_path)
    notes.append(check_upstream_model(teacher.path.parent, base, made_by="extract_last_hidden_ddp.py",
                                      what=f"the teacher states in {teacher.path.parent} were extracted with"))
    teacher.check_against(n_layers=model_config.num_hidden_layers, hidden_size=model_config.hidden_size,
                          n_dataset_rows=n_train)
    selected = select_training_rows(mask, teacher, stage.training_ratio, stage.dataset_seed)
    teacher.check_finite(selected)

    train, dropped_train = tokenize_ao_split(dataset_dict["train"].select(selected), tokenizer, stage.max_length,
                                             desc="tokenizing train", rating_ids=ratings)
    valid = dataset_dict["valid"]
    if stage.eval_limit is not None:
        valid = valid.select(range(min(stage.eval_limit, len(valid))))
    evaluation, dropped_eval = tokenize_ao_split(valid, tokenizer, stage.max_length, desc="tokenizing valid",
                                                 rating_ids=ratings)
    if len(train) == 0 or len(evaluation) == 0:
        raise SirenError(f"no rows fit --max_length {stage.max_length} (train {len(train)}, valid {len(evaluation)})")
    counts = {
        "train_rows": n_train, "masked_in_rows": int(mask.sum()), "selected_rows": len(selected),
        "trained_rows": len(train), "dropped_too_long_train": dropped_train, "eval_rows": len(evaluation),
        "dropped_too_long_eval": dropped_eval, "teacher_rows": teacher.n_rows,
    }
    return AlignmentInputs(model_config, tokenizer, ratings, train, evaluation, teacher, counts,
                           [note for note in notes if note])


# --------------------------------------------------------------------------------------------------
# Training


@dataclass
class AlignmentRun:
    """What `train_alignment` gives back for the stage to write."""

    model: Any  # the trained PeftModel, unwrapped from accelerate/DeepSpeed
    lora_target_modules: list[str]
    best_eval: dict
    best_checkpoint: str | None
    log_history: list[dict]
    optimizer_steps: int
    accelerator: Any
    schedule: Schedule | None = None

    @property
    def is_main_process(self) -> bool:
        return self.accelerator.is_main_process


def check_finite_weights(model) -> None:
    """Refuse (one line) trained weights that are NaN or infinite, before anything is saved."""
    import torch

    for name, parameter in model.named_parameters():
        if parameter.requires_grad and not bool(torch.isfinite(parameter.detach()).all()):
            raise SirenError(f"training left non-finite values in {name}; the outputs were not written "
                             "(lower --learning_rate, or check the teacher states)")


def last_step_evaluation(state) -> dict | None:
    """The metrics training already logged for the weights it ends with, or None.

    The weights kept at the end are the last step's when no checkpoint was chosen or the chosen one
    is the last step's (with --save_steps equal to --max_steps it is the only one). If that step was
    evaluated, evaluating again would spend an evaluation on the same weights for the same numbers.
    """
    best = state.best_model_checkpoint
    if best is not None and Path(best).name != f"checkpoint-{state.global_step}":
        return None
    for entry in reversed(state.log_history):
        if entry.get("step") == state.global_step and "eval_loss" in entry:
            return {key: value for key, value in entry.items() if key != "step"}
    return None


def train_alignment(stage: AlignmentArguments, config, inputs: AlignmentInputs,
                    checkpoints: CheckpointFolder | None = None) -> AlignmentRun:
    """LoRA on --peft's modules of --model, trained by the HiddenAlignmentTrainer with `config`; then
    the best checkpoint is evaluated once more (unless its evaluation is logged already:
    `last_step_evaluation`) and the trained weights are checked for NaN/inf (on
    every process, so all stop together). When anything fails, the main process tidies the
    checkpoint folder (`CheckpointFolder.tidy_after_failure`) and the error says what stays there."""
    import torch
    from accelerate import PartialState
    from peft import LoraConfig

    from siren.alignment_data import RowIndexCollator
    from siren.alignment_trainer import HiddenAlignmentTrainer
    from siren.lora import lora_target_modules
    from siren.modeling import load_causal_lm

    main_process, trainer = PartialState().is_main_process, None
    try:
        model = load_causal_lm(stage.model, torch.bfloat16 if config.bf16 else torch.float32, "cpu")
        targets = lora_target_modules(model, stage.peft)
        peft_config = LoraConfig(r=stage.lora_r, lora_alpha=stage.lora_alpha, lora_dropout=stage.lora_dropout,
                                 target_modules=targets, bias="none", task_type="CAUSAL_LM")
        trainer = HiddenAlignmentTrainer(
            model=model, args=config, train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
            processing_class=inputs.tokenizer,
            data_collator=RowIndexCollator(pad_token_id=inputs.tokenizer.pad_token_id), peft_config=peft_config,
            teacher=inputs.teacher, kd_ratio=stage.kd_ratio, loss_type=stage.loss_type,
            rating_token_ids=inputs.rating_ids, checkpoints=checkpoints,
        )
        schedule = training_schedule(len(inputs.train_dataset), trainer.args, trainer.accelerator.num_processes)
        if main_process:
            print(f"training: {schedule.summary()}", flush=True)
        trainer.train()
        best_eval = last_step_evaluation(trainer.state) or trainer.evaluate()
        trained = trainer.accelerator.unwrap_model(trainer.model)
        check_finite_weights(trained)
    except BaseException as err:
        if trainer is not None:
            trainer.close_progress_bars()
        left = checkpoints.tidy_after_failure() if checkpoints is not None and main_process else ""
        if isinstance(err, SirenError):
            raise SirenError(f"{err}{left}") from None
        raise
    return AlignmentRun(trained, targets, best_eval, trainer.state.best_model_checkpoint,
                        list(trainer.state.log_history), trainer.state.global_step, trainer.accelerator, schedule)


# --------------------------------------------------------------------------------------------------
# The model folders it writes


def save_adapter(peft_model, folder: str | os.PathLike, base_record: dict) -> None:
    """The LoRA adapter (PEFT format) and base_model.json (`siren.modeling.adapter_base_record`)."""
    from siren.io import atomic_write_json
    from siren.modeling import ADAPTER_BASE_NAME

    peft_model.save_pretrained(str(folder))
    atomic_write_json(Path(folder) / ADAPTER_BASE_NAME, base_record)


def save_merged(adapter_dir: str | os.PathLike, folder: str | os.PathLike, base_path: str | os.PathLike) -> None:
    """The base with the saved adapter merged in float32 and stored in the base's own dtype
    (`siren.lora`), plus the base's tokenizer files copied byte for byte (so its tokenizer record
    equals the base's). Merged from the adapter on disk, so `merged/` is exactly what base +
    `adapter/` give, up to one rounding to the base's dtype."""
    from siren.lora import merge_lora_float32
    from siren.tokenizer_identity import copy_tokenizer_files

    merged = merge_lora_float32(base_path, adapter_dir)
    merged.save_pretrained(str(folder))
    if not copy_tokenizer_files(base_path, folder):
        raise SirenError(f"{base_path} holds no tokenizer files to copy into {folder}")
