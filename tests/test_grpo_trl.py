"""The TRL backend of stage 3 (siren.grpo_trl), run through main_grpo_amazon.sh with BACKEND=trl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from siren import SirenError
from siren.grpo_trl import load_grpo_split, output_name, parse_args, validate
from siren.reward import trl_reward

LAUNCHER = REPO / "main_grpo_amazon.sh"


@pytest.fixture(scope="module")
def short_prompt_dir(small_movies_root, tmp_path_factory) -> Path:
    """Parquet files with one history line and 4 rows per split.

    On CPU, TRL 1.16 scores every prompt position against the 151k-token vocabulary, so short
    prompts keep the two GRPO steps fast.
    """
    sys.path.insert(0, str(REPO))
    import preprocess_grpo

    out = tmp_path_factory.mktemp("grpo_data") / "max@1-long@False"
    preprocess_grpo.main(["--data_root", str(small_movies_root), "--max_history", "1", "--use_long_history", "false",
                          "--limit", "4", "--out_dir", str(out)])
    return out


def _trl_env(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> dict:
    return {
        **os.environ, "PYTHON": sys.executable, "BACKEND": "trl", "MODEL_PATH": str(tiny_model_dir),
        "DATA_DIR": str(data_dir), "DATA_NAME": "Movies", "CKPT_DIR": str(tmp_path / "ckpt"),
        "TRAINER_DIR": str(tmp_path / "trainer"), "MAX_STEPS": "2", "ROLLOUT_N": "2", "BATCH_SIZE": "1",
        "MICRO_BATCH_SIZE": "1", "MAX_RESPONSE_LENGTH": "4", "SAVE_FREQ": "0", "TEST_FREQ": "2", "LORA_RANK": "4",
    }


@pytest.mark.slow
def test_trl_backend_two_steps_on_cpu(tiny_model_dir, short_prompt_dir, tmp_path):
    env = _trl_env(tiny_model_dir, short_prompt_dir, tmp_path)
    extra = ["--val_limit", "1", "--gradient_checkpointing", "false"]
    proc = subprocess.run(["bash", str(LAUNCHER), *extra], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = tmp_path / "ckpt" / output_name("Movies", 2)
    assert "'reward'" in proc.stdout + proc.stderr  # TRL's console log line carries the mean reward
    assert f"wrote {out}" in proc.stdout and "LoRA merged" in proc.stdout

    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    train_rewards = [entry["reward"] for entry in log if "reward" in entry]
    assert len(train_rewards) == 2 and all(-3.0 <= r <= 3.0 for r in train_rewards)
    assert any("eval_reward" in entry for entry in log)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == 2 and manifest["backend"] == "trl"
    assert manifest["args"]["num_generations"] == 2 and manifest["args"]["beta"] == 0.001

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not any("lora" in name for name, _ in model.named_parameters())
    ids = tokenizer("<think>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape[-1] == model.config.vocab_size

    # finished output is not replaced; the check happens before any model is loaded
    again = subprocess.run(["bash", str(LAUNCHER)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_dataset_columns_feed_the_reward(short_prompt_dir, tiny_model_dir):
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    dataset, dropped = load_grpo_split(short_prompt_dir, "train", tokenizer, max_prompt_length=4096)
    assert dropped == 0 and len(dataset) == 4
    assert set(dataset.column_names) == {"prompt", "ground_truth", "data_source", "index"}
    assert dataset["index"] == [0, 1, 2, 3]
    assert [m["role"] for m in dataset[0]["prompt"]] == ["system", "user"]
    truth = dataset["ground_truth"]
    # GRPOTrainer passes the non-prompt columns to the reward as keyword lists
    completions = [[{"role": "assistant", "content": f"<think>ok</think><answer>{t}</answer>"}] for t in truth]
    assert trl_reward(prompts=dataset["prompt"], completions=completions, ground_truth=truth,
                      data_source=dataset["data_source"], index=dataset["index"]) == [3.0] * 4

    short, dropped = load_grpo_split(short_prompt_dir, "train", tokenizer, max_prompt_length=10)
    assert len(short) == 0 and dropped == 4


def test_bad_arguments_are_clear_errors(short_prompt_dir, tiny_model_dir, tmp_path):
    base = ["--model_path", str(tiny_model_dir), "--data_dir", str(short_prompt_dir), "--ckpt_dir", str(tmp_path)]
    with pytest.raises(SirenError, match="num_generations must be >= 2"):
        validate(parse_args(base + ["--num_generations", "1"]))
    with pytest.raises(SirenError, match="multiple of --prompts_per_micro_batch"):
        validate(parse_args(base + ["--prompts_per_step", "3", "--prompts_per_micro_batch", "2"]))
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / "train.parquet").write_bytes((short_prompt_dir / "train.parquet").read_bytes())
    with pytest.raises(SirenError, match="missing parquet split: .*val.parquet"):
        validate(parse_args(["--model_path", str(tiny_model_dir), "--data_dir", str(only_train)]))
    with pytest.raises(SirenError, match="not a model folder"):
        validate(parse_args(["--model_path", str(tmp_path), "--data_dir", str(short_prompt_dir)]))
    (tmp_path / output_name("Movies", 5)).mkdir()
    with pytest.raises(SirenError, match="already exists"):
        validate(parse_args(base + ["--max_steps", "5"]))
    validate(parse_args(base + ["--max_steps", "5", "--overwrite"]))


def test_one_step_at_the_default_lr_moves_the_policy_weights(tiny_model_dir, one_thread):
    """Full fine-tuning at --lr's default: the policy keeps float32 weights, so one AdamW step under
    bf16 autocast (what GRPOConfig(bf16=True) does on a GPU) changes them; on bf16 weights the same
    step rounds away for nearly all of them."""
    import torch

    from siren.grpo_trl import load_policy

    lr = parse_args(["--model_path", str(tiny_model_dir), "--data_dir", "unused"]).lr

    def changed_fraction(model) -> float:
        weight = model.model.layers[0].self_attn.q_proj.weight
        before = weight.detach().clone()
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        ids = torch.arange(100, 116).unsqueeze(0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        return (weight.detach() != before).float().mean().item()

    policy = load_policy(tiny_model_dir)
    assert {param.dtype for param in policy.parameters()} == {torch.float32}
    assert changed_fraction(policy) > 0.99
    assert changed_fraction(load_policy(tiny_model_dir).to(torch.bfloat16)) < 0.05
