"""Stage 5, hidden-state alignment: losses, teacher lookup, row selection, collator and trainer.

The student reads the answer-only context (prompt + empty think + `<answer>`); the teacher read the
prompt + its own reasoning + `<answer>` (stage 4b). Both end in the same `<answer>` token, and at
that position the student's hidden state of every layer is pulled towards the teacher's:

    loss = kd_ratio * align + (1 - kd_ratio) * lm

`align` is the per-layer distance (`--loss_type`) averaged over layers and over the rows of the
batch, with the teacher treated as a constant; `lm` is the cross-entropy of the completion tokens
(what the teacher writes after `<answer>`, e.g. "4.0</answer>", then EOS) averaged over those
tokens. kd_ratio 1.0 is pure alignment, the paper's "HA" setting; the first completion token is
the rating digit, so the aligned position and answer-only decoding read the same token either way.

Teacher rows are looked up by the dataset row index that travels with each example through the
collator, never by position in the batch, so shuffling and multi-process sharding cannot pair a
row with another row's teacher.

The stage's settings are two dataclasses parsed together by `HfArgumentParser`:
`AlignmentArguments` (inputs, loss, LoRA, row selection) and
`siren.alignment_config.AlignmentTrainingConfig`, TRL's `SFTConfig` with every `TrainingArguments`
field, of which stage 5 fixes a few (`--output_dir` is the run folder; the trainer's checkpoints go
to `<output_dir>/checkpoints`); that one lives apart because it imports trl. `load_alignment_inputs`,
`prepare_checkpoints` and `train_alignment` are the stage's work; `save_adapter` and `save_merged`
write its model folders.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from siren import SirenError

if TYPE_CHECKING:
    import torch

    from siren.hidden import TeacherStates

# torch, numpy and trl are imported inside the functions, so that a script can read LOSS_TYPES and
# PEFT_FAMILIES for its --help, and refuse bad flags, without paying for those imports.

LOSS_TYPES = ("cosine", "mse", "mae", "mse_zscore", "mse_zscore_t", "std_mae")
_ZSCORE_EPS = 1e-6

# LoRA target families, as the module names Llama-style decoders (Qwen2/3, Llama, Mistral) use.
# `all-linear` means every linear layer inside the decoder blocks (not the LM head).
PEFT_FAMILIES = {
    "KV": ("k_proj", "v_proj"),
    "QKV": ("q_proj", "k_proj", "v_proj"),
    "QV": ("q_proj", "v_proj"),
    "FFN": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": None,
}

ROW_INDEX = "row_index"      # dataset row (4c `index`, = parquet extra_info.index) carried through the collator
RATING_LABEL = "rating_label"  # the float label, for the eval rating metrics
IGNORE_INDEX = -100

# Eval metrics that can pick the checkpoint kept at the end (`--metric_for_best_model`); only
# rating_acc is better when greater.
BEST_METRICS = ("rating_rmse", "rating_mae", "rating_acc", "loss")

# What stage 5 writes into its run folder (--output_dir), all together or none; the trainer's
# checkpoints go to CHECKPOINTS_DIR inside it, with the settings of the run that made them.
RUN_OUTPUTS = ("adapter", "merged", "train_log.jsonl", "manifest.json")
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_SETTINGS_NAME = "run_settings.json"


# --------------------------------------------------------------------------------------------------
# Settings: the stage's dataclass and the training config (SFTConfig) it is parsed with


@dataclass
class AlignmentArguments:
    """Stage 5's own settings. The training settings are the `SFTConfig` / `TrainingArguments` fields."""

    model: str = field(metadata={"help": "the GRPO model folder to align (weights + tokenizer)",
                                 "aliases": ["--model_path"]})
    data_path: str = field(metadata={"help": "stage 4c's answer-only DatasetDict (train and valid splits)",
                                     "aliases": ["--instruction_path"]})
    teacher_hidden_path: str = field(metadata={
        "help": "stage 4b's teacher_hidden.npy, or the folder holding it (with teacher_index.npy and manifest.json)"})
    teacher_mask_path: str = field(metadata={"help": "stage 4a's mask.pt (a bool per train row: the teacher was right)"})
    teacher_index_path: str | None = field(default=None, metadata={
        "help": "teacher_index.npy; unset: next to teacher_hidden.npy (without one, teacher rows = train rows)"})
    kd_ratio: float = field(default=1.0, metadata={
        "help": "loss = kd_ratio * align + (1 - kd_ratio) * completion CE; 1.0 = pure alignment, the paper's HA"})
    loss_type: str = field(default="cosine", metadata={"help": "per-layer alignment distance", "choices": list(LOSS_TYPES)})
    peft: str = field(default="KV", metadata={
        "help": "which linear layers get LoRA adapters, mapped to this model's module names", "choices": list(PEFT_FAMILIES)})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    training_ratio: float = field(default=0.1, metadata={"help": "fraction of the masked-in training rows to train on"})
    dataset_seed: int = field(default=42, metadata={"help": "seed of the --training_ratio subset"})
    max_length: int = field(default=2048, metadata={
        "help": "rows with more prompt + completion tokens are dropped and counted, never truncated"})
    eval_limit: int | None = field(default=None, metadata={
        "help": "evaluate on the first N valid rows (unset: all)", "aliases": ["--max_eval_samples"]})
    overwrite: bool = field(default=False, metadata={
        "help": "replace finished outputs in --output_dir and clear checkpoints of another run"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.kd_ratio <= 1.0:
            raise SirenError(f"--kd_ratio must be in [0, 1], got {self.kd_ratio}")
        if not 0.0 < self.training_ratio <= 1.0:
            raise SirenError(f"--training_ratio must be in (0, 1], got {self.training_ratio}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise SirenError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        for name in ("lora_r", "lora_alpha", "max_length", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SirenError(f"--{name} must be at least 1, got {value}")


# Warm-up as a fraction of the optimizer steps (transformers reads a --warmup_steps below 1 so), so
# the schedule keeps its shape whatever the GPU count. The authors fixed 100 steps. With 4 rows per
# device, 3 epochs and a 1,000-row mask, one GPU makes ceil(1000 / 4) * 3 = 750 optimizer steps,
# and ceil(0.133 * 750) = 100 of them warm up: the authors' value. On 8 GPUs the same run makes
# ceil(1000 / 32) * 3 = 96 steps, so their 100 steps never let the learning rate reach its peak;
# 0.133 warms up for 13 of them.
WARMUP_RATIO = 0.133

# Stage 5's defaults for library fields, given to hf_parser. TRL's own differ: learning_rate 2e-5,
# gradient_checkpointing True, bf16 True.
TRAINING_DEFAULTS = dict(
    learning_rate=1e-4, lr_scheduler_type="constant_with_warmup", warmup_steps=WARMUP_RATIO, weight_decay=0.05,
    per_device_train_batch_size=4, per_device_eval_batch_size=4, num_train_epochs=3, gradient_checkpointing=False,
    eval_strategy="steps", eval_steps=50, save_strategy="steps", save_steps=50, save_total_limit=2,
    load_best_model_at_end=True, metric_for_best_model="rating_rmse", logging_steps=10, report_to="none", seed=42,
)

RUN_DIR_HELP = ("the run folder: adapter/, merged/, train_log.jsonl and manifest.json, and the trainer's checkpoints "
                 "in <output_dir>/checkpoints; unset: ckpt/AO_<model>_<peft>-<loss_type>-kd<kd_ratio>")
def default_run_dir(stage: AlignmentArguments) -> Path:
    """ckpt/AO_<model>_<peft>-<loss_type>-kd<kd_ratio>: the path says what made the run."""
    from siren.modeling import model_label

    return Path("ckpt") / f"AO_{model_label(stage.model)}_{stage.peft}-{stage.loss_type}-kd{stage.kd_ratio:g}"


def resolve_run_dir(stage: AlignmentArguments, config) -> Path:
    """The run folder (--output_dir, or the default); the trainer's checkpoints go inside it."""
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(stage)
    config.run_dir = str(run_dir)
    config.output_dir = str(run_dir / CHECKPOINTS_DIR)
    return run_dir


# Settings that do not change what the checkpoints hold, or differ between the processes of one
# run (local_rank) or between spellings of one folder (output_dir: the folder being checked).
_NOT_CHECKPOINT_SETTINGS = frozenset({
    "overwrite", "output_dir", "local_rank", "report_to", "run_name", "project", "logging_steps",
    "logging_strategy", "logging_first_step", "logging_nan_inf_filter", "log_level", "log_level_replica",
    "disable_tqdm", "dataloader_num_workers", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "save_total_limit", "hub_token",
})


def run_settings(stage: AlignmentArguments, config) -> dict:
    """The settings that decide a run's checkpoints, as JSON values (recorded next to them)."""
    settings = {"alignment": asdict(stage), "training": config.to_dict()}
    settings = json.loads(json.dumps(settings, default=str))
    return {part: {k: v for k, v in values.items() if k not in _NOT_CHECKPOINT_SETTINGS}
            for part, values in settings.items()}


def check_checkpoint_dir(folder: str | os.PathLike, settings: dict, overwrite: bool) -> bool:
    """May this run use `folder` for its checkpoints? True if it holds old ones to clear first.

    Training always starts from step 0, so old checkpoints are never resumed; but until they are
    cleared, `load_best_model_at_end` and the `save_total_limit` rotation see them next to the new
    ones. Those of a run with the same settings are cleared (this run makes them again); those of a
    run with other or unrecorded settings (a killed run, an older version) are refused, in one line
    naming what differs, unless --overwrite.
    """
    folder = Path(folder)
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise SirenError(f"{folder} is a file; stage 5 keeps its checkpoints in that folder")
    if not any(folder.iterdir()):
        return False
    if overwrite:
        return True
    record = folder / CHECKPOINT_SETTINGS_NAME
    if not record.is_file():
        raise SirenError(f"{folder} holds checkpoints of an earlier run whose settings are not recorded; "
                         "pass --overwrite to clear them, or choose another --output_dir")
    from siren.io import read_json

    saved = read_json(record)
    saved = saved if isinstance(saved, dict) else {}
    differing = []
    for part in ("alignment", "training"):
        old, new = saved.get(part, {}), settings.get(part, {})
        differing += [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if differing:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in differing[:3])
        more = f" and {len(differing) - 3} more" if len(differing) > 3 else ""
        raise SirenError(f"{folder} holds checkpoints of a run with other settings ({detail}{more}); "
                         "pass --overwrite to clear them, or choose another --output_dir")
    return True


def prepare_checkpoints(stage: AlignmentArguments, config) -> str | None:
    """Check the checkpoint folder on every process, then on the main one clear old checkpoints and
    record this run's settings there. Returns a note to print when old checkpoints were cleared.

    A run that saves checkpoints on several machines needs that folder shared by all of them
    (DeepSpeed writes each rank's optimizer shard into it, and every rank loads the best checkpoint
    back at the end): `siren.distributed.check_shared_folder` refuses it otherwise, before training.
    """
    from accelerate import PartialState

    from siren.distributed import check_shared_folder
    from siren.io import atomic_write_json

    folder = Path(config.output_dir)
    settings = run_settings(stage, config)
    clear = check_checkpoint_dir(folder, settings, stage.overwrite)  # every process decides alike
    state = PartialState()
    state.wait_for_everyone()
    if str(getattr(config.save_strategy, "value", config.save_strategy)) != "no":
        check_shared_folder(folder, state)
    if state.is_main_process:
        if clear:
            shutil.rmtree(folder)
        atomic_write_json(folder / CHECKPOINT_SETTINGS_NAME, settings)
    state.wait_for_everyone()
    return f"note: cleared the checkpoints of an earlier run in {folder}" if clear else None


# --------------------------------------------------------------------------------------------------
# Losses


def _zscore(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / (std + _ZSCORE_EPS)


def per_layer_alignment_loss(student: torch.Tensor, teacher: torch.Tensor, loss_type: str = "cosine") -> torch.Tensor:
    """Distance per row and layer between hidden states `[..., L, H]`; returns `[..., L]`.

    cosine        1 - cos(s, t)                      (0 identical, 2 opposite)
    mse           mean_h (s - t)^2
    mae           mean_h |s - t|
    mse_zscore    mse of z(s) and z(t), each standardised over h by its own mean and std
    mse_zscore_t  mse of s and t both standardised by the teacher's mean and std
                  (= mse / var(t): scale-free in the teacher's units)
    std_mae       mae of z(s) and z(t), each standardised by its own mean and std
    The teacher is detached: gradients flow into the student only. Computed in float32, since bf16
    cannot resolve the small distances between well-aligned states.
    """
    import torch.nn.functional as F

    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
    student, teacher = student.float(), teacher.detach().float()
    if loss_type == "cosine":
        return 1.0 - F.cosine_similarity(student, teacher, dim=-1)
    if loss_type == "mse":
        return (student - teacher).pow(2).mean(-1)
    if loss_type == "mae":
        return (student - teacher).abs().mean(-1)
    if loss_type in ("mse_zscore", "std_mae"):
        z_student = _zscore(student, student.mean(-1, keepdim=True), student.std(-1, keepdim=True))
        z_teacher = _zscore(teacher, teacher.mean(-1, keepdim=True), teacher.std(-1, keepdim=True))
        diff = z_student - z_teacher
        return diff.pow(2).mean(-1) if loss_type == "mse_zscore" else diff.abs().mean(-1)
    if loss_type == "mse_zscore_t":
        mean, std = teacher.mean(-1, keepdim=True), teacher.std(-1, keepdim=True)
        return (_zscore(student, mean, std) - _zscore(teacher, mean, std)).pow(2).mean(-1)
    raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")


def alignment_loss(student: torch.Tensor, teacher: torch.Tensor, loss_type: str = "cosine") -> torch.Tensor:
    """Scalar loss for `[B, L, H]` states: per-layer distance averaged over layers and rows."""
    return per_layer_alignment_loss(student, teacher, loss_type).mean()


def per_layer_cosine(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity per layer `[L]` over the batch (for logging)."""
    import torch.nn.functional as F

    return F.cosine_similarity(student.detach().float(), teacher.detach().float(), dim=-1).mean(0)


def mix_losses(align: torch.Tensor, lm: torch.Tensor, kd_ratio: float) -> torch.Tensor:
    """kd_ratio * align + (1 - kd_ratio) * lm; a zero weight drops its term (so a NaN there cannot leak)."""
    if kd_ratio >= 1.0:
        return align
    if kd_ratio <= 0.0:
        return lm
    return kd_ratio * align + (1.0 - kd_ratio) * lm


# --------------------------------------------------------------------------------------------------
# Positions and the LM term


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """Per row of `[B, T]` labels, the position before the first completion token (end of `<answer>`).

    Works for any padding side: it is read from the labels, not from the sequence length.
    """
    is_completion = labels != IGNORE_INDEX
    if not bool(is_completion.any(dim=1).all()):
        raise ValueError("a row has no completion tokens, so it has no answer position")
    first_completion = is_completion.int().argmax(dim=1)
    if bool((first_completion == 0).any()):
        raise ValueError("a row starts with a completion token, so it has no prompt")
    return first_completion - 1


def completion_lm_loss(final_hidden: torch.Tensor, labels: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor:
    """Cross-entropy of the completion tokens, using the LM head on those positions only.

    `final_hidden` is the last-layer (post-norm) state `[B, T, H]`; applying the head to a handful of
    positions instead of the whole sequence avoids a `[B, T, vocab]` logits tensor.
    """
    import torch.nn.functional as F

    next_labels = labels[:, 1:]
    keep = next_labels != IGNORE_INDEX
    logits = lm_head(final_hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), next_labels[keep])


# --------------------------------------------------------------------------------------------------
# Teacher states, mask and training rows


def select_training_rows(mask: torch.Tensor, teacher: TeacherStates, training_ratio: float, seed: int) -> list[int]:
    """The masked-in rows (teacher correct), then a `training_ratio` random subset of them, sorted.

    A masked-in row without a teacher state is an error: it would silently shrink the training set.
    """
    if not 0.0 < training_ratio <= 1.0:
        raise SirenError(f"--training_ratio must be in (0, 1], got {training_ratio}")
    masked_in = [int(i) for i in mask.nonzero().flatten().tolist()]
    if not masked_in:
        raise SirenError("the mask selects no rows: the teacher got no training row right")
    missing = [i for i in masked_in if not teacher.has(i)]
    if missing:
        raise SirenError(
            f"{len(missing)} of the {len(masked_in)} masked-in rows have no teacher hidden state "
            f"(first: row {missing[0]}); {teacher.path} covers {teacher.n_rows} rows"
        )
    n_keep = max(1, round(training_ratio * len(masked_in)))
    return sorted(random.Random(seed).sample(masked_in, n_keep))


# --------------------------------------------------------------------------------------------------
# Tokenization, collator


def tokenize_ao_example(prompt: str, completion: str, tokenizer, max_length: int | None) -> dict | None:
    """input_ids = prompt ids + completion ids + EOS; labels mask the prompt. None if too long.

    The prompt is tokenized on its own, exactly as inference tokenizes it, so the last prompt token
    (the aligned position) is the token inference reads the rating after.
    """
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        completion_ids = completion_ids + [tokenizer.eos_token_id]
    input_ids = prompt_ids + completion_ids
    if max_length is not None and len(input_ids) > max_length:
        return None
    return {"input_ids": input_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids}


def tokenize_ao_split(dataset, tokenizer, max_length: int | None, desc: str = "tokenizing",
                      rating_ids: dict[int, int] | None = None):
    """A 4c split -> `datasets.Dataset` with input_ids, labels, row_index, rating_label.

    Returns (dataset, n_dropped); rows longer than max_length are dropped (truncating would cut the
    aligned position or the rating) and counted. With `rating_ids` (rating -> token id), a row whose
    completion does not start with its label's rating token is an error: the cross-entropy and the
    rating accuracy both read that token at the aligned position.
    """
    from datasets import Dataset
    from tqdm.auto import tqdm

    columns = {"input_ids": [], "labels": [], ROW_INDEX: [], RATING_LABEL: []}
    dropped = 0
    for row in tqdm(dataset, desc=desc, total=len(dataset)):
        example = tokenize_ao_example(row["prompt"], row["completion"], tokenizer, max_length)
        if example is None:
            dropped += 1
            continue
        if rating_ids is not None:
            first = example["labels"][example["labels"].count(IGNORE_INDEX)]  # labels: prompt masked, then completion
            if first != rating_ids.get(int(row["label"])):
                raise SirenError(f"row {row['index']}: completion {row['completion']!r} does not start with the "
                                 f"rating token of label {row['label']} (rebuild the 4c dataset with preprocess_hidden.py)")
        columns["input_ids"].append(example["input_ids"])
        columns["labels"].append(example["labels"])
        columns[ROW_INDEX].append(int(row["index"]))
        columns[RATING_LABEL].append(float(row["label"]))
    return Dataset.from_dict(columns), dropped


@dataclass
class RowIndexCollator:
    """TRL's padding collator (right padding, labels padded with -100) plus the row index and label."""

    pad_token_id: int

    def __post_init__(self):
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self._pad = DataCollatorForLanguageModeling(pad_token_id=self.pad_token_id)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        batch = self._pad([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
        batch[ROW_INDEX] = torch.tensor([int(e[ROW_INDEX]) for e in examples], dtype=torch.long)
        batch[RATING_LABEL] = torch.tensor([float(e[RATING_LABEL]) for e in examples], dtype=torch.float32)
        return batch


# --------------------------------------------------------------------------------------------------
# LoRA targets


def linear_module_names(model) -> set[str]:
    """Leaf names of the linear layers inside the model, without the LM head."""
    import torch

    output_layer = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output_layer
    }


def lora_target_modules(model, peft: str) -> list[str]:
    """Map `--peft` to the module names this model actually has; an error names what it has."""
    if peft not in PEFT_FAMILIES:
        raise SirenError(f"unknown --peft {peft!r}; expected one of {', '.join(PEFT_FAMILIES)}")
    found = linear_module_names(model)
    wanted = PEFT_FAMILIES[peft]
    if wanted is None:
        if not found:
            raise SirenError("the model has no linear layers to put LoRA adapters on")
        return sorted(found)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise SirenError(
            f"--peft {peft} needs modules {', '.join(wanted)}, but this model has no {', '.join(missing)} "
            f"(its linear layers: {', '.join(sorted(found)) or 'none'})"
        )
    return list(wanted)


# --------------------------------------------------------------------------------------------------
# Trainer


def _rating_summary(predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    errors = predictions - labels
    return {
        "rating_mae": float(errors.abs().mean()),
        "rating_rmse": math.sqrt(float(errors.pow(2).mean())),
        "rating_acc": float((errors.abs() < 1e-6).float().mean()),
    }


def build_trainer_class():
    """Define the SFTTrainer subclass here, so importing siren.alignment does not import trl."""
    import torch
    from trl import SFTTrainer

    from siren.modeling import constrained_ratings, rating_probabilities

    class HiddenAlignmentTrainer(SFTTrainer):
        """SFTTrainer whose loss is hidden-state alignment at the answer position (see module doc).

        Training rows must all have teacher states. Evaluation rows (the valid split) have none, so
        evaluation reports the completion cross-entropy as `eval_loss` and the answer-only rating
        metrics (`eval_rating_mae`, `eval_rating_rmse`, `eval_rating_acc`, argmax over "1".."5").
        """

        def __init__(self, *args, teacher: TeacherStates, kd_ratio: float, loss_type: str,
                     rating_token_ids: dict[int, int], **kwargs):
            super().__init__(*args, **kwargs)
            if loss_type not in LOSS_TYPES:
                raise SirenError(f"unknown --loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
            self.teacher = teacher
            self.kd_ratio = float(kd_ratio)
            self.loss_type = loss_type
            self.rating_token_ids = dict(rating_token_ids)
            self._eval_predictions: list[torch.Tensor] = []
            self._eval_labels: list[torch.Tensor] = []
            # Our loss is a per-batch mean, so let Trainer divide it by the accumulation steps.
            self.model_accepts_loss_kwargs = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if model.training else "eval"
            row_index = inputs.pop(ROW_INDEX)
            rating_label = inputs.pop(RATING_LABEL)
            labels = inputs["labels"]
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                output_hidden_states=True,
                use_cache=False,
                logits_to_keep=1,  # logits are built below for the few positions that need them
            )
            positions = answer_positions(labels)
            rows = torch.arange(labels.shape[0], device=labels.device)
            # hidden_states[0] is the embedding output; [1:] are the L layers, the last one post-norm.
            student = torch.stack([h[rows, positions] for h in outputs.hidden_states[1:]], dim=1)
            lm_head = self.accelerator.unwrap_model(model).get_output_embeddings()
            lm = completion_lm_loss(outputs.hidden_states[-1], labels, lm_head)

            if mode == "train":
                teacher = self.teacher.lookup(row_index.tolist()).to(student.device)
                align = alignment_loss(student, teacher, self.loss_type)
                loss = mix_losses(align, lm, self.kd_ratio)
                # Gathered, so that every process sees a NaN on any of them and all stop together.
                finite = self.accelerator.gather(torch.isfinite(loss.detach()).reshape(1).float())
                if not bool(finite.all()):
                    raise SirenError(f"the training loss is not finite (NaN or infinite) at step "
                                     f"{self.state.global_step + 1}; stopped, nothing written (lower --learning_rate, "
                                     "or check the inputs)")
                # gather, not gather_for_metrics: the latter trims "duplicate" rows at the end of an epoch.
                cosines = self.accelerator.gather(per_layer_cosine(student, teacher)[None]).mean(0)
                self._metrics[mode]["align_loss"].append(self.accelerator.gather(align.detach()[None]).mean().item())
                for layer, value in enumerate(cosines.tolist(), start=1):
                    self._metrics[mode][f"cos_layer_{layer}"].append(value)
            else:
                loss = lm
                answer_logits = lm_head(outputs.hidden_states[-1][rows, positions])
                probs = rating_probabilities(answer_logits, self.rating_token_ids)
                predicted = constrained_ratings(probs, sorted(self.rating_token_ids))
                self._eval_predictions.append(self.accelerator.gather_for_metrics(predicted.detach()).cpu())
                self._eval_labels.append(self.accelerator.gather_for_metrics(rating_label.to(predicted.device)).cpu())
            self._metrics[mode]["lm_loss"].append(self.accelerator.gather(lm.detach()[None]).mean().item())
            return (loss, {"hidden_states": outputs.hidden_states}) if return_outputs else loss

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            # Trainer.evaluate logs and then returns this same dict, so the rating metrics added here
            # are also what `metric_for_best_model` is compared on.
            if not self.model.training and self._eval_predictions:
                summary = _rating_summary(torch.cat(self._eval_predictions), torch.cat(self._eval_labels))
                logs.update({f"eval_{k}": v for k, v in summary.items()})
                self._eval_predictions.clear()
                self._eval_labels.clear()
            super().log(logs, start_time)

    return HiddenAlignmentTrainer


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
    epoch and ceil(epochs * that) in all unless --max_steps is set, and warms up for
    `config.get_warmup_steps` of them (a --warmup_steps below 1 is a fraction of the steps).
    """
    per_device, accumulation = config.per_device_train_batch_size, config.gradient_accumulation_steps
    batches = math.ceil(n_rows / (per_device * processes))
    per_epoch = max(math.ceil(batches / accumulation), 1)
    by_epochs = config.max_steps is None or config.max_steps <= 0
    steps = math.ceil(config.num_train_epochs * per_epoch) if by_epochs else int(config.max_steps)
    return Schedule(n_rows, per_device, processes, accumulation, per_epoch, steps, config.get_warmup_steps(steps),
                    config.num_train_epochs if by_epochs else None)


# --------------------------------------------------------------------------------------------------
# The stage's work: inputs, training, the model folders it writes


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
    """Read and check stage 5's inputs, cheapest first; `base` is `model_record(stage.model)`.

    Refused in one line: a --model without config.json or single-token ratings; 4c prompts built
    with another tokenizer or 4b states extracted with another model (their manifests); a mask or
    teacher file that does not fit (siren.cot.load_mask, TeacherStates); non-finite teacher states
    in the selected rows; no row that fits --max_length. Missing upstream manifests are notes.
    """
    from transformers import AutoConfig

    from siren.ao_data import load_ao_dataset
    from siren.cot import load_mask
    from siren.hidden import TeacherStates
    from siren.modeling import check_upstream_model
    from siren.tokenization import load_tokenizer, rating_token_ids

    if not (Path(stage.model) / "config.json").is_file():
        raise SirenError(f"--model {stage.model} holds no model (no config.json)")
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
            raise SirenError(f"training left non-finite values in {name}; nothing was written "
                             "(lower --learning_rate, or check the teacher states)")


def train_alignment(stage: AlignmentArguments, config, inputs: AlignmentInputs) -> AlignmentRun:
    """LoRA on --peft's modules of --model, trained by the HiddenAlignmentTrainer with `config`; then
    the best checkpoint is evaluated once more and the trained weights are checked for NaN/inf (on
    every process, so all stop together)."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stage.model, dtype=torch.bfloat16 if config.bf16 else torch.float32)
    targets = lora_target_modules(model, stage.peft)
    peft_config = LoraConfig(r=stage.lora_r, lora_alpha=stage.lora_alpha, lora_dropout=stage.lora_dropout,
                             target_modules=targets, bias="none", task_type="CAUSAL_LM")
    trainer = build_trainer_class()(
        model=model, args=config, train_dataset=inputs.train_dataset, eval_dataset=inputs.eval_dataset,
        processing_class=inputs.tokenizer, data_collator=RowIndexCollator(pad_token_id=inputs.tokenizer.pad_token_id),
        peft_config=peft_config, teacher=inputs.teacher, kd_ratio=stage.kd_ratio, loss_type=stage.loss_type,
        rating_token_ids=inputs.rating_ids,
    )
    schedule = training_schedule(len(inputs.train_dataset), trainer.args, trainer.accelerator.num_processes)
    if trainer.accelerator.is_main_process:
        print(f"training: {schedule.summary()}", flush=True)
    trainer.train()
    best_eval = trainer.evaluate()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    check_finite_weights(trained)
    return AlignmentRun(trained, targets, best_eval, trainer.state.best_model_checkpoint,
                        list(trainer.state.log_history), trainer.state.global_step, trainer.accelerator, schedule)


def save_adapter(peft_model, folder: str | os.PathLike, base_record: dict) -> None:
    """The LoRA adapter (PEFT format) and base_model.json (`siren.modeling.adapter_base_record`)."""
    from siren.io import atomic_write_json
    from siren.modeling import ADAPTER_BASE_NAME

    peft_model.save_pretrained(str(folder))
    atomic_write_json(Path(folder) / ADAPTER_BASE_NAME, base_record)


def save_merged(adapter_dir: str | os.PathLike, folder: str | os.PathLike, base_path: str | os.PathLike) -> None:
    """The base with the saved adapter merged in float32 and stored in the base's own dtype
    (`siren.lora_merge`), plus the base's tokenizer files copied byte for byte (so its tokenizer
    record equals the base's). Merged from the adapter on disk, so `merged/` is exactly what
    base + `adapter/` give, up to one rounding to the base's dtype."""
    from siren.lora_merge import merge_lora_float32
    from siren.modeling import copy_tokenizer_files

    merged = merge_lora_float32(base_path, adapter_dir)
    merged.save_pretrained(str(folder))
    if not copy_tokenizer_files(base_path, folder):
        raise SirenError(f"{base_path} holds no tokenizer files to copy into {folder}")
