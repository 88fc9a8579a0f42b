"""Stage 5's trainer: transformers' `Trainer` with the hidden-state alignment loss
(`siren.alignment_losses`) at the answer position, the answer-only rating metrics at evaluation,
and checkpoints that carry the run's settings.

A plain `Trainer`, not TRL's `SFTTrainer`: stage 5 tokenizes, collates and computes its loss
itself, so none of SFTConfig's dataset, packing or loss settings would apply, and its flags would
be flags that do nothing. The LoRA wrapping is peft's `get_peft_model`, as SFTTrainer does it.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import Trainer

from siren import SirenError
from siren.alignment_checkpoints import CHECKPOINT_PREFIX, CheckpointFolder
from siren.alignment_data import RATING_LABEL, ROW_INDEX
from siren.alignment_losses import (
    LOSS_TYPES,
    alignment_loss,
    answer_positions,
    completion_lm_loss,
    mix_losses,
    per_layer_cosine,
)

if TYPE_CHECKING:
    from siren.teacher_hidden import TeacherStates


def rating_summary(predictions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """rating_mae, rating_rmse and rating_acc (exact match) of constrained ratings (`siren.metrics`)."""
    from siren.metrics import rating_metrics

    metrics = rating_metrics(predictions.tolist(), labels.tolist())
    return {f"rating_{name}": metrics[name] for name in ("mae", "rmse", "acc")}


class HiddenAlignmentTrainer(Trainer):
    """Trainer whose training loss is hidden-state alignment at the answer position.

    Training rows must all have teacher states. Evaluation rows (the valid split) have none, so
    evaluation reports the completion cross-entropy as `eval_loss` and the answer-only rating
    metrics (`eval_rating_mae`, `eval_rating_rmse`, `eval_rating_acc`, argmax over "1".."5").
    With `checkpoints`, the run's settings are recorded before its first checkpoint is saved, and
    a full disk while saving one is a one-line error that leaves no partial checkpoint.
    """

    def __init__(self, model, args, *, teacher: TeacherStates, kd_ratio: float, loss_type: str,
                 rating_token_ids: dict[int, int], peft_config=None, checkpoints: CheckpointFolder | None = None,
                 **kwargs):
        if loss_type not in LOSS_TYPES:
            raise SirenError(f"unknown --loss_type {loss_type!r}; expected one of {', '.join(LOSS_TYPES)}")
        if peft_config is not None:
            from peft import get_peft_model
            from transformers import enable_full_determinism, set_seed

            # PEFT draws the LoRA A matrices at random, and Trainer seeds only in its own __init__,
            # after this: seed first (as TRL's trainers do), or --seed leaves the adapter's start
            # to whatever state torch's generator is in, and no two runs train alike.
            (enable_full_determinism if args.full_determinism else set_seed)(args.seed)
            model = get_peft_model(model, peft_config)
        super().__init__(model=model, args=args, **kwargs)
        self.teacher = teacher
        self.kd_ratio = float(kd_ratio)
        self.loss_type = loss_type
        self.rating_token_ids = dict(rating_token_ids)
        self.checkpoints = checkpoints
        self._metrics: dict[str, defaultdict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._eval_predictions: list[torch.Tensor] = []
        self._eval_labels: list[torch.Tensor] = []
        # Our loss is a per-batch mean, so let Trainer divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        from siren.modeling import constrained_ratings, rating_probabilities

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
                                 f"{self.state.global_step + 1}; stopped, the outputs were not written (lower "
                                 "--learning_rate, or check the inputs)")
            # gather, not gather_for_metrics: the latter trims "duplicate" rows at the end of an epoch.
            cosines = self.accelerator.gather(per_layer_cosine(student, teacher)[None]).mean(0)
            self._metrics[mode]["align_loss"].append(self.accelerator.gather(align.detach()[None]).mean().item())
            for layer, value in enumerate(cosines.tolist(), start=1):
                self._metrics[mode][f"cos_layer_{layer}"].append(value)
        else:
            loss = lm
            answer_logits = lm_head(outputs.hidden_states[-1][rows, positions].to(next(lm_head.parameters()).dtype))
            probs = rating_probabilities(answer_logits, self.rating_token_ids)
            predicted = constrained_ratings(probs, sorted(self.rating_token_ids))
            self._eval_predictions.append(self.accelerator.gather_for_metrics(predicted.detach()).cpu())
            self._eval_labels.append(self.accelerator.gather_for_metrics(rating_label.to(predicted.device)).cpu())
        self._metrics[mode]["lm_loss"].append(self.accelerator.gather(lm.detach()[None]).mean().item())
        return (loss, {"hidden_states": outputs.hidden_states}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the means of the metrics gathered since the last log; at evaluation also the rating
        metrics. Trainer.evaluate logs and then returns this same dict, so they are also what
        `metric_for_best_model` is compared on."""
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{name}": sum(values) / len(values)
                     for name, values in self._metrics[mode].items() if values})
        if mode == "eval" and self._eval_predictions:
            summary = rating_summary(torch.cat(self._eval_predictions), torch.cat(self._eval_labels))
            logs.update({f"eval_{name}": value for name, value in summary.items()})
            self._eval_predictions.clear()
            self._eval_labels.clear()
        super().log(logs, start_time)
        self._metrics[mode].clear()

    def close_progress_bars(self) -> None:
        """End the progress bars a failed run leaves open, so the one-line error starts a line."""
        from transformers.trainer_callback import ProgressCallback

        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ProgressCallback):
                for bar in (callback.training_bar, callback.prediction_bar):
                    if bar is not None:
                        bar.close()

    def _save_checkpoint(self, model, trial) -> None:
        if self.checkpoints is not None and self.args.should_save:
            self.checkpoints.record_settings()
        try:
            super()._save_checkpoint(model, trial)
        except OSError as err:
            from siren.io import is_disk_full
            from siren.reading import one_line

            if not is_disk_full(err):
                raise
            partial = Path(self._get_output_dir(trial=trial)) / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
            if self.args.should_save:
                shutil.rmtree(partial, ignore_errors=True)  # frees the space it took; it cannot be loaded
            raise SirenError(f"cannot write checkpoint {partial}: {one_line(err)}; stopped, the outputs were not "
                             "written (free disk space, or save less often with --save_steps)") from None
