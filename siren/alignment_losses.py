"""Stage 5's maths, in plain torch: the layer-wise alignment distances, the aligned position, and
the completion cross-entropy.

The student reads the answer-only context (prompt + empty think + `<answer>`); the teacher read the
prompt + its own reasoning + `<answer>` (stage 4b). Both end in the same `<answer>` token, and at
that position the student's hidden state of every layer is pulled towards the teacher's:

    loss = kd_ratio * align + (1 - kd_ratio) * lm

`align` is the per-layer distance (`loss_type`) averaged over layers and over the rows of the batch,
with the teacher treated as a constant; `lm` is the cross-entropy of the completion tokens (what the
teacher writes after `<answer>`, e.g. "4.0</answer>", then EOS) averaged over those tokens. kd_ratio
1.0 is pure alignment, the paper's "HA" setting; the first completion token is the rating digit, so
the aligned position and answer-only decoding read the same token either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("cosine", "mse", "mae", "mse_zscore", "mse_zscore_t", "std_mae")
IGNORE_INDEX = -100  # the label of a prompt or padding token: no loss there
_ZSCORE_EPS = 1e-6


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
    return F.cosine_similarity(student.detach().float(), teacher.detach().float(), dim=-1).mean(0)


def mix_losses(align: torch.Tensor, lm: torch.Tensor, kd_ratio: float) -> torch.Tensor:
    """kd_ratio * align + (1 - kd_ratio) * lm; a zero weight drops its term (so a NaN there cannot leak)."""
    if kd_ratio >= 1.0:
        return align
    if kd_ratio <= 0.0:
        return lm
    return kd_ratio * align + (1.0 - kd_ratio) * lm


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
    next_labels = labels[:, 1:]
    keep = next_labels != IGNORE_INDEX
    # Under mixed precision the final norm can hand back float32 while the head is bf16.
    head_dtype = next(lm_head.parameters()).dtype
    logits = lm_head(final_hidden[:, :-1][keep].to(head_dtype))
    return F.cross_entropy(logits.float(), next_labels[keep])
