"""siren.alignment_losses in plain torch: the distances on literal tensors, the stop-gradient
teacher, the loss mix, the aligned position and the completion cross-entropy; and that the module
needs nothing but torch."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from siren.alignment_losses import (
    IGNORE_INDEX,
    alignment_loss,
    answer_positions,
    completion_lm_loss,
    mix_losses,
    per_layer_alignment_loss,
    per_layer_cosine,
)

# --------------------------------------------------------------------------------------------------
# Losses


def test_cosine_identical_is_zero_and_opposite_is_two():
    vectors = torch.tensor([[[1.0, 2.0, -3.0], [0.5, 0.0, 4.0]]])  # [B=1, L=2, H=3]
    assert torch.allclose(per_layer_alignment_loss(vectors, vectors.clone(), "cosine"), torch.zeros(1, 2), atol=1e-6)
    assert torch.allclose(per_layer_alignment_loss(vectors, -vectors, "cosine"), torch.full((1, 2), 2.0), atol=1e-6)
    orthogonal = per_layer_alignment_loss(torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 3.0]]]), "cosine")
    assert torch.allclose(orthogonal, torch.ones(1, 1))


def test_mse_and_mae_by_hand_and_the_layer_average():
    student = torch.tensor([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    teacher = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    # layer 1: diffs (0, 2, 3); layer 2: diffs (-1, -1, -1)
    assert torch.allclose(per_layer_alignment_loss(student, teacher, "mse"), torch.tensor([[13 / 3, 1.0]]))
    assert torch.allclose(per_layer_alignment_loss(student, teacher, "mae"), torch.tensor([[5 / 3, 1.0]]))
    assert math.isclose(alignment_loss(student, teacher, "mse").item(), (13 / 3 + 1.0) / 2, rel_tol=1e-6)


def test_zscore_losses_by_hand():
    teacher = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    # An affine copy with positive scale standardises to the same vector.
    assert per_layer_alignment_loss(3 * teacher + 7, teacher, "mse_zscore").abs().max() < 1e-6
    assert per_layer_alignment_loss(3 * teacher + 7, teacher, "std_mae").abs().max() < 1e-6
    # A flipped copy: z(s) = -z(t), so mse = mean (2 z)^2 = 4 * (n-1)/n with the unbiased std (n=4).
    assert math.isclose(per_layer_alignment_loss(-teacher, teacher, "mse_zscore").item(), 4 * 3 / 4, rel_tol=1e-4)
    z = (teacher - 2.5) / teacher.std()
    assert math.isclose(per_layer_alignment_loss(-teacher, teacher, "std_mae").item(), (2 * z).abs().mean().item(),
                        rel_tol=1e-4)
    # mse_zscore_t divides the plain mse by the teacher's variance: shift by 1 -> 1 / var(t).
    assert math.isclose(per_layer_alignment_loss(teacher + 1, teacher, "mse_zscore_t").item(),
                        1 / teacher.var().item(), rel_tol=1e-4)


@pytest.mark.parametrize("loss_type", ["cosine", "mse", "mae", "mse_zscore", "mse_zscore_t", "std_mae"])
def test_teacher_is_stop_gradient(loss_type):
    student = torch.randn(2, 3, 8, requires_grad=True)
    teacher = torch.randn(2, 3, 8, requires_grad=True)
    alignment_loss(student, teacher, loss_type).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_unknown_loss_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown loss_type"):
        alignment_loss(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), "kl")
    with pytest.raises(ValueError, match="shapes differ"):
        alignment_loss(torch.zeros(1, 2, 2), torch.zeros(1, 1, 2))


def test_mix_losses():
    align, lm = torch.tensor(2.0), torch.tensor(10.0)
    assert mix_losses(align, lm, 1.0).item() == 2.0
    assert mix_losses(align, lm, 0.0).item() == 10.0
    assert math.isclose(mix_losses(align, lm, 0.25).item(), 0.25 * 2 + 0.75 * 10)
    assert mix_losses(align, torch.tensor(float("nan")), 1.0).item() == 2.0




def test_answer_positions_right_and_left_padding():
    right = torch.tensor([[-100, -100, -100, 7, 8, -100], [-100, 5, 6, -100, -100, -100]])
    left = torch.tensor([[-100, -100, -100, -100, 7, 8], [-100, -100, -100, -100, 5, 6]])
    assert answer_positions(right).tolist() == [2, 0]
    assert answer_positions(left).tolist() == [3, 3]
    with pytest.raises(ValueError, match="no completion"):
        answer_positions(torch.full((1, 3), IGNORE_INDEX))


def test_answer_positions_refuse_a_row_without_prompt():
    with pytest.raises(ValueError, match="no prompt"):
        answer_positions(torch.tensor([[7, 8, -100]]))


def test_completion_lm_loss_is_the_cross_entropy_of_the_completion_tokens_only():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6, 4, generator=generator)
    head = torch.nn.Linear(4, 11, bias=False)
    labels = torch.full((2, 6), IGNORE_INDEX)
    labels[0, 3:5] = torch.tensor([2, 9])   # row 0: completion at 3-4, then padding
    labels[1, 2:6] = torch.tensor([1, 0, 5, 7])
    # position t predicts label t+1: row 0 reads positions 2, 3; row 1 positions 1..4
    logits = torch.cat([head(hidden[0, 2:4]), head(hidden[1, 1:5])])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([2, 9, 1, 0, 5, 7]))
    assert torch.allclose(completion_lm_loss(hidden, labels, head), expected)
    # Mixed precision on a CPU: float32 final states meet a bf16 head (stage 5 with --bf16 true).
    half_head = torch.nn.Linear(4, 11, bias=False).to(torch.bfloat16)
    half_head.weight.data.copy_(head.weight.data)
    in_bf16 = completion_lm_loss(hidden, labels, half_head)
    assert in_bf16.dtype == torch.float32 and torch.allclose(in_bf16, expected, atol=0.05)


def test_per_layer_cosine_is_the_batch_mean_per_layer():
    student = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])  # [B=2, L=2, H=2]
    teacher = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 1.0]]])
    assert torch.allclose(per_layer_cosine(student, teacher), torch.tensor([1.0, 0.0]))


def test_the_loss_module_imports_torch_only():
    """Readable and testable without trl or transformers (issue 21 item 4)."""
    import siren.alignment_losses as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported == {"__future__", "torch"}, imported
