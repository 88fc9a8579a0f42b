"""Stage 5's parts: losses on literal tensors (siren.alignment_losses, pure torch), the aligned
position, teacher lookup, row selection, LoRA targets, row-index pairing under a shuffled loader,
overfitting one batch, and the stops on non-finite teacher states, losses and weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from siren import SirenError
from siren.alignment import check_finite_weights, last_step_evaluation
from siren.alignment_data import (
    ROW_INDEX,
    RowIndexCollator,
    select_training_rows,
    tokenize_ao_example,
    tokenize_ao_split,
)
from siren.alignment_losses import (
    IGNORE_INDEX,
    answer_positions,
    completion_lm_loss,
)
from siren.answer_only_data import completion_text
from siren.cot_results import load_mask
from siren.lora import lora_target_modules
from siren.teacher_hidden import TeacherStates

# --------------------------------------------------------------------------------------------------
# Aligned position (the losses themselves: test_alignment_losses.py)


@pytest.mark.slow
def test_aligned_position_is_the_end_of_answer_tag(tiny_model_dir, verl_dir):
    from siren.prompts import answer_only_context, chat_prompt_text
    from siren.tokenization import load_tokenizer
    from siren.verl_data import load_split_rows

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    rows = load_split_rows(verl_dir, "train", limit=3)
    examples = [
        {**tokenize_ao_example(answer_only_context(chat_prompt_text(tokenizer, r["prompt"])), completion_text(r["label"]),
                               tokenizer, None), ROW_INDEX: i, "rating_label": r["label"]}
        for i, r in enumerate(rows)
    ]
    batch = RowIndexCollator(pad_token_id=tokenizer.pad_token_id)(examples)
    positions = answer_positions(batch["labels"])
    answer_token = tokenizer.encode("<answer>", add_special_tokens=False)[-1]
    rating_ids = {tokenizer.encode(str(r), add_special_tokens=False)[0] for r in range(1, 6)}
    for b, (row, example) in enumerate(zip(rows, examples, strict=True)):
        p = int(positions[b])
        prompt_ids = tokenizer(answer_only_context(chat_prompt_text(tokenizer, row["prompt"])),
                               add_special_tokens=False)["input_ids"]
        assert p == len(prompt_ids) - 1  # the inference input ends exactly here
        assert batch["input_ids"][b, p].item() == answer_token
        assert batch["input_ids"][b, p + 1].item() in rating_ids
        assert tokenizer.decode(batch["input_ids"][b, p + 1: p + 4]) == f"{row['label']:.1f}"  # "4", ".", "0"
        assert batch["input_ids"][b, : p + 1].tolist() == prompt_ids
        assert batch["attention_mask"][b, : len(example["input_ids"])].all()
    assert batch[ROW_INDEX].tolist() == [0, 1, 2]


@pytest.mark.slow
def test_completions_must_start_with_the_rating_token(tiny_model_dir):
    from datasets import Dataset

    from siren.tokenization import load_tokenizer, rating_token_ids

    tokenizer = load_tokenizer(tiny_model_dir, padding_side="right")
    ratings = rating_token_ids(tokenizer)
    rows = [{"prompt": "P<answer>", "completion": completion_text(label), "label": label, "index": i}
            for i, label in enumerate([4.0, 1.0])]
    tokenized, dropped = tokenize_ao_split(Dataset.from_list(rows), tokenizer, None, rating_ids=ratings)
    assert dropped == 0
    # "4.0</answer>" + EOS: the cross-entropy covers the teacher's whole answer
    assert tokenizer.decode([t for t in tokenized[0]["labels"] if t != IGNORE_INDEX]) == "4.0</answer>" + tokenizer.eos_token
    wrong = [{**rows[0], "completion": " 4.0</answer>"}]
    with pytest.raises(SirenError, match="row 0: completion ' 4.0</answer>' does not start with the rating token"):
        tokenize_ao_split(Dataset.from_list(wrong), tokenizer, None, rating_ids=ratings)


def test_completion_lm_loss_matches_full_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    input_ids = torch.randint(0, 1000, (2, 9))
    labels = input_ids.clone()
    labels[:, :6] = IGNORE_INDEX
    labels[1, 8] = IGNORE_INDEX  # right padding on row 1
    with torch.no_grad():
        out = model(input_ids=input_ids, output_hidden_states=True)
        expected = torch.nn.functional.cross_entropy(
            out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
        ours = completion_lm_loss(out.hidden_states[-1], labels, model.get_output_embeddings())
    assert torch.allclose(ours, expected, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Teacher, mask, rows


def _write_teacher(directory: Path, hidden: np.ndarray, index: np.ndarray | None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "teacher_hidden.npy", hidden)
    if index is not None:
        np.save(directory / "teacher_index.npy", index)
    return directory


def test_teacher_lookup_follows_the_index_file(tmp_path):
    row_ids = np.array([7, 2, 5], dtype=np.int64)
    hidden = np.stack([np.full((2, 4), r, dtype=np.float32) for r in row_ids])
    teacher = TeacherStates(_write_teacher(tmp_path / "t", hidden, row_ids))
    got = teacher.lookup([5, 7, 2, 5])
    assert got.shape == (4, 2, 4)
    assert got[:, 0, 0].tolist() == [5.0, 7.0, 2.0, 5.0]
    teacher.check_against(n_layers=2, hidden_size=4, n_dataset_rows=8)
    with pytest.raises(SirenError, match="no teacher hidden state for dataset row 3"):
        teacher.lookup([3])


def test_teacher_mismatches_give_both_numbers(tmp_path):
    hidden = np.zeros((4, 2, 8), dtype=np.float32)
    teacher = TeacherStates(_write_teacher(tmp_path / "a", hidden, None))
    with pytest.raises(SirenError, match=r"hidden size 8.*hidden size 64"):
        teacher.check_against(n_layers=2, hidden_size=64, n_dataset_rows=4)
    with pytest.raises(SirenError, match=r"2 layers.*3 layers"):
        teacher.check_against(n_layers=3, hidden_size=8, n_dataset_rows=4)
    with pytest.raises(SirenError, match=r"has 4 rows but the training split has 10 rows"):
        teacher.check_against(n_layers=2, hidden_size=8, n_dataset_rows=10)
    with pytest.raises(SirenError, match=r"3 entries but .* has 4 rows"):
        TeacherStates(_write_teacher(tmp_path / "b", hidden, np.arange(3)))
    out_of_range = TeacherStates(_write_teacher(tmp_path / "c", hidden, np.array([0, 1, 2, 9])))
    with pytest.raises(SirenError, match="names row 9, but the training split has 5 rows"):
        out_of_range.check_against(n_layers=2, hidden_size=8, n_dataset_rows=5)
    with pytest.raises(SirenError, match="missing teacher hidden states"):
        TeacherStates(tmp_path / "nowhere")


def test_mask_checks_and_row_selection(tmp_path):
    torch.save(torch.tensor([True, False, True]), tmp_path / "mask.pt")
    with pytest.raises(SirenError, match="3 entries but the training split has 5 rows"):
        load_mask(tmp_path / "mask.pt", 5)
    mask = torch.tensor([i % 2 == 0 for i in range(20)])
    teacher = TeacherStates(_write_teacher(tmp_path / "t", np.zeros((20, 1, 2), dtype=np.float32), None))
    everything = select_training_rows(mask, teacher, 1.0, seed=0)
    assert everything == list(range(0, 20, 2))
    half = select_training_rows(mask, teacher, 0.5, seed=42)
    assert len(half) == 5 and set(half) <= set(everything) and half == sorted(half)
    assert half == select_training_rows(mask, teacher, 0.5, seed=42)
    partial = TeacherStates(_write_teacher(tmp_path / "p", np.zeros((2, 1, 2), dtype=np.float32), np.array([0, 2])))
    with pytest.raises(SirenError, match="8 of the 10 masked-in rows have no teacher hidden state"):
        select_training_rows(mask, partial, 1.0, seed=0)
    with pytest.raises(SirenError, match="selects no rows"):
        select_training_rows(torch.zeros(20, dtype=torch.bool), teacher, 1.0, seed=0)


def test_non_finite_teacher_states_are_found_in_the_selected_rows(tmp_path):
    row_ids = np.array([3, 0, 2, 1], dtype=np.int64)
    hidden = np.ones((4, 2, 8), dtype=np.float16)
    hidden[2, 1, 5] = np.inf  # file row 2 = dataset row 2
    teacher = TeacherStates(_write_teacher(tmp_path / "t", hidden, row_ids))
    teacher.check_finite([0, 1, 3])  # the bad row is not selected: fine
    with pytest.raises(SirenError, match="teacher state of dataset row 2 holds NaN or infinite values"):
        teacher.check_finite([0, 2], chunk_bytes=1)  # one row per chunk
    hidden[:] = np.nan
    all_nan = TeacherStates(_write_teacher(tmp_path / "n", hidden, row_ids))
    with pytest.raises(SirenError, match="dataset row 3 holds NaN"):  # the first in file order
        all_nan.check_finite([0, 1, 2, 3])


def test_non_finite_trained_weights_are_refused():
    layer = torch.nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    check_finite_weights(layer)
    with torch.no_grad():
        layer.bias[0] = float("nan")  # frozen weights are not the trained ones
    check_finite_weights(layer)
    with torch.no_grad():
        layer.weight[1, 2] = float("inf")
    with pytest.raises(SirenError, match="training left non-finite values in weight; the outputs were not written"):
        check_finite_weights(layer)


# --------------------------------------------------------------------------------------------------
# LoRA targets


def test_lora_targets_come_from_the_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert lora_target_modules(model, "KV") == ["k_proj", "v_proj"]
    assert lora_target_modules(model, "QV") == ["q_proj", "v_proj"]
    assert lora_target_modules(model, "FFN") == ["gate_proj", "up_proj", "down_proj"]
    assert lora_target_modules(model, "all-linear") == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    class FusedAttention(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = torch.nn.Linear(4, 12)
            self.head = torch.nn.Linear(4, 10)

        def get_output_embeddings(self):
            return self.head

    with pytest.raises(SirenError, match=r"no k_proj, v_proj \(its linear layers: c_attn\)"):
        lora_target_modules(FusedAttention(), "KV")


# --------------------------------------------------------------------------------------------------
# Trainer: row/teacher pairing under shuffling, and overfitting one batch


def _make_trainer(model_dir: Path, inputs: dict[str, Path], out: Path, teacher: TeacherStates, rows: list[int], **overrides):
    from datasets import load_from_disk
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainingArguments

    from siren.alignment_trainer import HiddenAlignmentTrainer
    from siren.tokenization import load_tokenizer, rating_token_ids

    tokenizer = load_tokenizer(model_dir, padding_side="right")
    dataset_dict = load_from_disk(str(inputs["instructions"]))
    train, _ = tokenize_ao_split(dataset_dict["train"].select(rows), tokenizer, None)
    valid, _ = tokenize_ao_split(dataset_dict["valid"], tokenizer, None)
    settings = dict(
        output_dir=str(out), max_steps=4, per_device_train_batch_size=3, learning_rate=1e-2, warmup_steps=0,
        lr_scheduler_type="constant", use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
        eval_strategy="no", remove_unused_columns=False, seed=3,
    )
    settings.update(overrides)
    return HiddenAlignmentTrainer(
        model=AutoModelForCausalLM.from_pretrained(str(model_dir)),
        args=TrainingArguments(**settings),
        train_dataset=train,
        eval_dataset=valid,
        processing_class=tokenizer,
        data_collator=RowIndexCollator(pad_token_id=tokenizer.pad_token_id),
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["k_proj", "v_proj"],
                               task_type="CAUSAL_LM"),
        teacher=teacher, kd_ratio=1.0, loss_type="cosine", rating_token_ids=rating_token_ids(tokenizer),
    ), train


@pytest.mark.slow
def test_shuffled_loader_pairs_every_row_with_its_own_teacher(stage5_inputs, tiny_model_dir, tmp_path):
    n_rows = 12
    # Teacher rows stored in reverse order, each filled with its dataset row id, so a wrong pairing shows.
    row_ids = np.arange(n_rows, dtype=np.int64)[::-1].copy()
    hidden = np.stack([np.full((2, 64), r, dtype=np.float32) for r in row_ids])
    teacher = TeacherStates(_write_teacher(tmp_path / "teacher", hidden, row_ids))
    rows = list(range(n_rows))
    # 4 steps of 3 rows: one shuffled pass over the 12 rows.
    trainer, train = _make_trainer(tiny_model_dir, stage5_inputs, tmp_path / "run", teacher, rows, max_steps=4)
    ids_of_row = {int(r): list(ids) for r, ids in zip(train[ROW_INDEX], train["input_ids"], strict=True)}

    seen_batches: list[tuple[list[int], torch.Tensor]] = []
    collator = trainer.data_collator

    def recording_collator(examples):
        batch = collator(examples)
        seen_batches.append((batch[ROW_INDEX].tolist(), batch["input_ids"].clone()))
        return batch

    looked_up: list[tuple[list[int], torch.Tensor]] = []
    lookup = teacher.lookup

    def recording_lookup(row_indices):
        states = lookup(row_indices)
        looked_up.append((list(row_indices), states.clone()))
        return states

    trainer.data_collator = recording_collator
    teacher.lookup = recording_lookup
    trainer.train()

    assert len(looked_up) == 4
    order = [r for row_batch, _ in seen_batches for r in row_batch]
    assert sorted(order) == rows and order != rows, "the training loader did not shuffle"
    for (row_batch, input_ids), (teacher_rows, states) in zip(seen_batches, looked_up, strict=False):
        assert teacher_rows == row_batch
        for b, row in enumerate(row_batch):
            assert input_ids[b, : len(ids_of_row[row])].tolist() == ids_of_row[row]  # the row's own text
            assert torch.all(states[b] == row)  # and its own teacher state


def test_the_lora_weights_start_from_the_seed_whatever_state_torch_is_in(stage5_inputs, tiny_model_dir, tmp_path):
    teacher = TeacherStates(stage5_inputs["teacher"])

    def lora_start(torch_seed: int, **overrides) -> dict[str, torch.Tensor]:
        torch.manual_seed(torch_seed)  # what another library may have left torch's generator at
        trainer, _ = _make_trainer(tiny_model_dir, stage5_inputs, tmp_path / f"run{torch_seed}", teacher, [0, 1],
                                   **overrides)
        return {name: param.detach().clone() for name, param in trainer.model.named_parameters() if "lora_A" in name}

    first, second, other_seed = lora_start(1), lora_start(2), lora_start(1, seed=4)
    assert first and list(first) == list(second)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not any(torch.equal(first[name], other_seed[name]) for name in first)


@pytest.mark.slow
def test_overfitting_one_batch_halves_the_alignment_loss(stage5_inputs, tiny_model_dir, tmp_path):
    teacher = TeacherStates(stage5_inputs["teacher"])
    trainer, _ = _make_trainer(tiny_model_dir, stage5_inputs, tmp_path / "run", teacher, [0, 1],
                               max_steps=30, per_device_train_batch_size=2)
    trainer.train()
    align = [entry["align_loss"] for entry in trainer.state.log_history if "align_loss" in entry]
    assert len(align) == 30
    assert align[-1] <= 0.5 * align[0], align
    assert any(key.startswith("cos_layer_") for key in trainer.state.log_history[0])
    assert "lm_loss" in trainer.state.log_history[0]


@pytest.mark.slow
def test_gradient_checkpointing_still_trains_the_adapter(stage5_inputs, tiny_model_dir, tmp_path):
    """The adapter behind frozen embeddings still gets gradients through checkpointed blocks (TRL
    calls `enable_input_require_grads` for this; transformers 5.9's Trainer needs no help): the LoRA
    B matrices, zero at the start, move."""
    teacher = TeacherStates(stage5_inputs["teacher"])
    trainer, _ = _make_trainer(tiny_model_dir, stage5_inputs, tmp_path / "run", teacher, [0, 1, 2],
                               max_steps=2, gradient_checkpointing=True)
    trainer.train()
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    assert lora_b and all(p.detach().abs().sum() > 0 for p in lora_b)


@pytest.mark.slow
def test_eval_reports_rating_metrics(stage5_inputs, tiny_model_dir, tmp_path):
    teacher = TeacherStates(stage5_inputs["teacher"])
    trainer, _ = _make_trainer(tiny_model_dir, stage5_inputs, tmp_path / "run", teacher, [0, 1, 2],
                               per_device_eval_batch_size=4)
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_rating_mae", "eval_rating_rmse", "eval_rating_acc", "eval_lm_loss"} <= set(metrics)
    assert 0.0 <= metrics["eval_rating_mae"] <= 4.0
    assert metrics["eval_rating_rmse"] >= metrics["eval_rating_mae"] - 1e-9


def test_a_non_finite_loss_stops_training_at_its_step(stage5_inputs, tiny_model_dir, tmp_path):
    """The trainer's own guard (stage 5 also refuses such teacher files before training): rows 0-1 have
    finite teacher states, rows 2-3 NaN ones; in order, step 1 trains on rows 0-1 and step 2 stops."""
    hidden = np.load(Path(stage5_inputs["teacher"]) / "teacher_hidden.npy")[:4].copy()
    hidden[2:] = np.nan
    teacher = TeacherStates(_write_teacher(tmp_path / "teacher", hidden, np.arange(4)))
    trainer, _ = _make_trainer(tiny_model_dir, stage5_inputs, tmp_path / "run", teacher, [0, 1, 2, 3],
                               max_steps=4, per_device_train_batch_size=2, train_sampling_strategy="sequential")
    with pytest.raises(SirenError, match=r"the training loss is not finite \(NaN or infinite\) at step 2"):
        trainer.train()
    assert trainer.state.global_step == 1


# --------------------------------------------------------------------------------------------------
# The schedule printed before training (issue 19 item 8) and the float32 merge (item 6)


@pytest.mark.slow
def test_the_schedule_is_what_the_trainer_runs(stage5_inputs, tiny_model_dir, tmp_path):
    """By epochs, with a warm-up fraction: 12 rows, 3 per step, 2 epochs = 8 optimizer steps, of
    which ceil(0.25 * 8) = 2 warm up: steps 1 and 2 run at 0 and half the peak rate, the rest at it."""
    from siren.alignment import training_schedule

    teacher = TeacherStates(stage5_inputs["teacher"])
    trainer, _ = _make_trainer(tiny_model_dir, stage5_inputs, tmp_path / "run", teacher, list(range(12)),
                               max_steps=-1, num_train_epochs=2, warmup_steps=0.25,
                               lr_scheduler_type="constant_with_warmup")
    schedule = training_schedule(12, trainer.args, trainer.accelerator.num_processes)
    assert (schedule.steps_per_epoch, schedule.optimizer_steps, schedule.warmup_steps) == (4, 8, 2)
    trainer.train()
    assert trainer.state.global_step == schedule.optimizer_steps
    rates = [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]
    assert rates == pytest.approx([0.0, 5e-3] + [1e-2] * 6)


def _bf16_base(tiny_model_dir: Path, folder: Path) -> Path:
    """The tiny model saved in bfloat16, as a GRPO checkpoint usually is."""
    from transformers import AutoModelForCausalLM

    from siren.tokenizer_identity import copy_tokenizer_files

    AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.bfloat16).save_pretrained(str(folder))
    copy_tokenizer_files(tiny_model_dir, folder)
    return folder


@pytest.mark.slow
def test_the_merged_model_is_merged_in_float32_and_saved_in_the_base_dtype(tiny_model_dir, tmp_path):
    """A bf16 base and a K/V adapter trained in bf16 (DeepSpeed's bf16 engine casts the whole model,
    LoRA weights included): merged/ holds W + scale * B @ A formed in float32 and rounded once to
    bf16. Merging inside the trained bf16 model (what stage 5 did) rounded the update to bf16, then
    the sum again, and differs."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from siren.alignment import save_merged

    base_dir = _bf16_base(tiny_model_dir, tmp_path / "base")
    trained = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.bfloat16),
                             LoraConfig(r=4, lora_alpha=8, target_modules=["k_proj", "v_proj"], task_type="CAUSAL_LM"))
    trained = trained.to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:  # B starts at zero; a trained adapter's is not
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    trained.save_pretrained(str(tmp_path / "adapter"))
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    base = load_file(str(base_dir / "model.safetensors"))

    save_merged(tmp_path / "adapter", tmp_path / "merged", base_dir)
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    assert AutoConfig.from_pretrained(str(tmp_path / "merged")).dtype == torch.bfloat16
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    in_bf16 = trained.merge_and_unload().state_dict()  # the old way
    differs_in_bf16 = 0
    for name, weight in base.items():
        assert merged[name].dtype == torch.bfloat16
        module = name.removesuffix(".weight")
        lora_a = adapter.get(f"base_model.model.{module}.lora_A.weight")
        if lora_a is None:
            assert torch.equal(merged[name], weight), name
            continue
        lora_b = adapter[f"base_model.model.{module}.lora_B.weight"]
        expected = (weight.float() + (8 / 4) * (lora_b.float() @ lora_a.float())).to(torch.bfloat16)
        assert torch.equal(merged[name], expected), name
        differs_in_bf16 += int(not torch.equal(in_bf16[name], expected))
    assert differs_in_bf16 == 4  # every K and V projection of the 2 layers


# --------------------------------------------------------------------------------------------------
# The evaluation reported at the end


def _state(best, step, history):
    from types import SimpleNamespace

    return SimpleNamespace(best_model_checkpoint=best, global_step=step, log_history=history)


def test_the_last_steps_logged_evaluation_is_reused_for_the_same_weights():
    history = [{"loss": 1.0, "step": 10}, {"eval_loss": 0.5, "eval_rating_rmse": 1.2, "epoch": 0.5, "step": 10},
               {"loss": 0.9, "step": 20}, {"eval_loss": 0.4, "eval_rating_rmse": 1.1, "epoch": 1.0, "step": 20}]
    expected = {"eval_loss": 0.4, "eval_rating_rmse": 1.1, "epoch": 1.0}
    assert last_step_evaluation(_state("run/checkpoint-20", 20, history)) == expected
    assert last_step_evaluation(_state(None, 20, history)) == expected  # no checkpoint chosen: the last weights


def test_other_weights_or_an_unevaluated_last_step_are_evaluated_again():
    history = [{"eval_loss": 0.5, "step": 10}, {"loss": 0.9, "step": 20}]
    assert last_step_evaluation(_state("run/checkpoint-10", 20, history)) is None  # the best is an earlier step
    assert last_step_evaluation(_state("run/checkpoint-20", 20, history)) is None  # step 20 was not evaluated
    assert last_step_evaluation(_state("run/checkpoint-10", 10, history)) == {"eval_loss": 0.5}
