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
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
