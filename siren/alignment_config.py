"""Stage 5's settings: two dataclasses parsed together, their defaults and their ranges.

`AlignmentArguments` holds what is stage 5's own (inputs, loss, LoRA, row selection);
`AlignmentTrainingConfig` is transformers' `TrainingArguments`, every field a flag, with this
stage's defaults (`TRAINING_DEFAULTS`). No field is defined in both. `parse_alignment_args` reads
them the way stage 3 reads its settings (`siren.recipe`): a `--config` YAML recipe and the command
line, a setting given twice refused, every number checked against its range (`siren.bounds`) and
`--report_to` against the installed integrations, all before anything loads.

`AlignmentTrainingConfig` resolves when left unset: `bf16` (when the GPU supports it),
`greater_is_better` (from the metric), `use_cpu` (without CUDA, so that gloo processes join).
`remove_unused_columns` is fixed (row_index and rating_label must reach the collator). `run_dir`
keeps --output_dir as given (None when unset) until `resolve_run_dir` places the checkpoints inside
it. The trainer pickles this config into every checkpoint (training_args.bin); as a module-level
class it unpickles anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainingArguments

from siren import SirenError
from siren.alignment_losses import LOSS_TYPES
from siren.bounds import AT_LEAST_ONE, FRACTION, TRAINING_BOUNDS, Bound
from siren.lora import PEFT_FAMILIES

# Eval metrics that can pick the checkpoint kept at the end (`--metric_for_best_model`); only
# rating_acc is better when greater.
BEST_METRICS = ("rating_rmse", "rating_mae", "rating_acc", "loss")

# The trainer's checkpoints go into this folder of the run folder (--output_dir).
CHECKPOINTS_DIR = "checkpoints"

RUN_DIR_HELP = ("the run folder: adapter/, merged/, train_log.jsonl and manifest.json, and the trainer's checkpoints "
                f"in <output_dir>/{CHECKPOINTS_DIR}; unset: ckpt/AO_<model>_<peft>-<loss_type>-kd<kd_ratio>")


@dataclass
class AlignmentArguments:
    """Stage 5's own settings. The training settings are the `TrainingArguments` fields."""

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
    dataset_seed: int = field(default=42, metadata={
        "help": "seed of the --training_ratio subset (--seed and --data_seed seed the model and the batch order)"})
    max_length: int = field(default=2048, metadata={
        "help": "rows with more prompt + completion tokens are dropped and counted, never truncated"})
    eval_limit: int | None = field(default=None, metadata={
        "help": "evaluate on the first N valid rows (unset: all)", "aliases": ["--max_eval_samples"]})
    overwrite: bool = field(default=False, metadata={
        "help": "replace finished outputs in --output_dir and clear checkpoints of another run"})


# The ranges of every number stage 5 reads, checked before anything loads (siren.bounds).
ALIGNMENT_BOUNDS = {
    **TRAINING_BOUNDS, "kd_ratio": FRACTION, "training_ratio": Bound(0, 1, low_open=True), "lora_r": AT_LEAST_ONE,
    "lora_alpha": AT_LEAST_ONE, "lora_dropout": Bound(0, 1, high_open=True), "dataset_seed": Bound(0, whole=True),
    "max_length": AT_LEAST_ONE, "eval_limit": AT_LEAST_ONE,
}


@dataclass
class AlignmentTrainingConfig(TrainingArguments):
    output_dir: str | None = field(default=None, metadata={"help": RUN_DIR_HELP, "aliases": ["--out_dir"]})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 weights and autocast; unset: when the GPU supports it (float32 on a CPU)"})
    metric_for_best_model: str | None = field(default="rating_rmse", metadata={
        "help": "eval metric that picks the checkpoint loaded at the end: rating_* are the answer-only ratings "
                "(argmax over 1..5) on the valid split, loss its completion cross-entropy", "choices": list(BEST_METRICS)})
    remove_unused_columns: bool = field(default=False, init=False)

    def __post_init__(self):
        import torch

        self.run_dir = self.output_dir
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if not torch.cuda.is_available():
            self.use_cpu = True
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = self.metric_for_best_model.removeprefix("eval_") == "rating_acc"
        steps = [str(getattr(s, "value", s)) for s in (self.eval_strategy, self.save_strategy)] == ["steps", "steps"]
        if self.load_best_model_at_end and steps and (
                self.eval_steps < 1 or self.save_steps < 1 or self.save_steps % self.eval_steps):
            raise SirenError(f"--save_steps ({self.save_steps:g}) must be a positive multiple of --eval_steps "
                             f"({self.eval_steps:g}): the best checkpoint is chosen at evaluations")
        super().__post_init__()


DATACLASSES = (AlignmentArguments, AlignmentTrainingConfig)

# Warm-up as a fraction of the optimizer steps (transformers reads a --warmup_steps below 1 so), so
# the schedule keeps its shape whatever the GPU count. The authors fixed 100 steps. With 4 rows per
# device, 3 epochs and a 1,000-row mask, one GPU makes ceil(1000 / 4) * 3 = 750 optimizer steps,
# and ceil(0.133 * 750) = 100 of them warm up: the authors' value. On 8 GPUs the same run makes
# ceil(1000 / 32) * 3 = 96 steps, so their 100 steps never let the learning rate reach its peak;
# 0.133 warms up for 13 of them.
WARMUP_RATIO = 0.133

# Stage 5's defaults for TrainingArguments fields, given to the parser (transformers' own:
# learning_rate 5e-5, lr_scheduler_type linear, weight_decay 0, batch sizes 8, logging_steps 500).
TRAINING_DEFAULTS = dict(
    learning_rate=1e-4, lr_scheduler_type="constant_with_warmup", warmup_steps=WARMUP_RATIO, weight_decay=0.05,
    per_device_train_batch_size=4, per_device_eval_batch_size=4, num_train_epochs=3, gradient_checkpointing=False,
    eval_strategy="steps", eval_steps=50, save_strategy="steps", save_steps=50, save_total_limit=2,
    load_best_model_at_end=True, metric_for_best_model="rating_rmse", logging_steps=10, report_to="none", seed=42,
)


def parse_alignment_args(argv: list[str], doc: str | None) -> tuple[AlignmentArguments, AlignmentTrainingConfig]:
    """(AlignmentArguments, AlignmentTrainingConfig) from `--config recipe.yaml` and the command line
    (`doc` is the --help text); every refusal is one line, before anything loads."""
    from siren.bounds import check_numbers, check_report_to
    from siren.cli import hf_parser
    from siren.recipe import build_dataclasses, parse_settings

    parser = hf_parser(DATACLASSES, doc, **TRAINING_DEFAULTS)
    namespace, given = parse_settings(parser, argv)
    check_numbers(parser, namespace, ALIGNMENT_BOUNDS, given)
    stage, config = build_dataclasses(DATACLASSES, namespace)
    check_report_to(config.report_to)
    return stage, config


def default_run_dir(stage: AlignmentArguments) -> Path:
    """ckpt/AO_<model>_<peft>-<loss_type>-kd<kd_ratio>: the path says what made the run."""
    from siren.modeling import model_label

    return Path("ckpt") / f"AO_{model_label(stage.model)}_{stage.peft}-{stage.loss_type}-kd{stage.kd_ratio:g}"


def resolve_run_dir(stage: AlignmentArguments, config: AlignmentTrainingConfig) -> Path:
    """The run folder (--output_dir, or the default); the trainer's checkpoints go inside it."""
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(stage)
    config.run_dir = str(run_dir)
    config.output_dir = str(run_dir / CHECKPOINTS_DIR)
    return run_dir
