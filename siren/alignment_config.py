"""Stage 5's training settings: TRL's `SFTConfig`, every `TrainingArguments` field a flag, with the
few fields stage 5 fixes taken off the command line. Apart from `siren.alignment` because defining
it imports trl, which the losses and the row selection do not need.

Fields stage 5 fixes (`init=False`): SFTTrainer's own `loss_type` and `max_length` (stage 5 has its
own of both names, in `AlignmentArguments`), `dataset_kwargs` (the rows come tokenized) and
`remove_unused_columns` (row_index and rating_label must reach the collator). Resolved when left
unset: `bf16` (when the GPU supports it), `greater_is_better` (from the metric), `use_cpu`
(without CUDA, so that gloo processes join). `run_dir` keeps --output_dir as given (None when
unset) until `siren.alignment.resolve_run_dir` places the checkpoints inside it. The trainer pickles
this config into every checkpoint (training_args.bin); as a module-level class it unpickles anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from siren import SirenError
from siren.alignment import BEST_METRICS, RUN_DIR_HELP


@dataclass
class AlignmentTrainingConfig(SFTConfig):
    output_dir: str | None = field(default=None, metadata={"help": RUN_DIR_HELP, "aliases": ["--out_dir"]})
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 weights and autocast; unset: when the GPU supports it (float32 on a CPU)"})
    metric_for_best_model: str | None = field(default="rating_rmse", metadata={
        "help": "eval metric that picks the checkpoint loaded at the end: rating_* are the answer-only ratings "
                "(argmax over 1..5) on the valid split, loss its completion cross-entropy", "choices": list(BEST_METRICS)})
    loss_type: str = field(default="nll", init=False)
    max_length: int | None = field(default=None, init=False)
    dataset_kwargs: dict | None = field(default_factory=lambda: {"skip_prepare_dataset": True}, init=False)
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

