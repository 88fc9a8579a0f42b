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
                          "--limit", "4", "--output_dir", str(out)])
    return out


def _trl_env(tiny_model_dir: Path, data_dir: Path, tmp_path: Path) -> dict:
    return {
        **os.environ, "PYTHON": sys.executable, "BACKEND": "trl", "MODEL_PATH": str(tiny_model_dir),
        "DATA_DIR": str(data_dir), "DATA_NAME": "Movies", "CKPT_DIR": str(tmp_path / "ckpt"),
        "TRAINER_DIR": str(tmp_path / "trainer"), "MAX_STEPS": "2", "ROLLOUT_N": "2", "BATCH_SIZE": "1",
        "MICRO_BATCH_SIZE": "1", "MAX_RESPONSE_LENGTH": "4", "SAVE_FREQ": "2", "TEST_FREQ": "2", "LORA_RANK": "4",
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
    # TRL's own checkpoint (SAVE_FREQ=2) went to TRAINER_DIR, with the pickled config (training_args.bin).
    assert (tmp_path / "trainer" / "checkpoint-2" / "training_args.bin").is_file()

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
    base = ["--model_path", str(tiny_model_dir), "--data_dir", str(short_prompt_dir), "--output_dir", str(tmp_path)]
    with pytest.raises(SirenError, match="GRPO requires at least 2 generations per prompt"):  # TRL's own check
        validate(*parse_args(base + ["--num_generations", "1", "--per_device_train_batch_size", "2",
                                     "--per_device_eval_batch_size", "2"]))
    # TRL counts completions: a generation batch of 3 cannot hold whole groups of 2 (GRPOConfig's own check)
    with pytest.raises(SirenError, match=r"generation_batch_size \(3\) must be divisible by num_generations \(2\)"):
        parse_args(base + ["--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "1",
                           "--num_generations", "2", "--eval_strategy", "no"])
    only_train = tmp_path / "only_train"
    only_train.mkdir()
    (only_train / "train.parquet").write_bytes((short_prompt_dir / "train.parquet").read_bytes())
    with pytest.raises(SirenError, match="missing parquet split: .*val.parquet"):
        validate(*parse_args(["--model_path", str(tiny_model_dir), "--data_dir", str(only_train)]))
    with pytest.raises(SirenError, match="not a model folder"):
        validate(*parse_args(["--model_path", str(tmp_path), "--data_dir", str(short_prompt_dir)]))
    with pytest.raises(SirenError, match="--limit must be at least 1"):
        validate(*parse_args(base + ["--train_limit", "0"]))
    (tmp_path / output_name("Movies", 5)).mkdir()
    with pytest.raises(SirenError, match="already exists"):
        validate(*parse_args(base + ["--max_steps", "5"]))
    validate(*parse_args(base + ["--max_steps", "5", "--overwrite"]))
    with pytest.raises(SirenError, match="--config needs a YAML recipe file"):
        parse_args(base + ["--config", str(tmp_path / "no_recipe.yaml")])


def test_training_settings_are_grpo_config_fields_and_the_old_names_are_aliases(tmp_path):
    """TrlParser((GRPOScriptArguments, GRPOConfig)): HF names for training, SIREN names (with the
    authors'/old names as aliases) for the rest; --output_dir is where GRPO_{data_name}_step{S} goes."""
    canonical = parse_args(["--model", "m", "--data_path", "d", "--output_dir", "out", "--limit", "5",
                            "--eval_limit", "3", "--lora_r", "8", "--learning_rate", "2e-6", "--num_train_epochs", "1",
                            "--save_steps", "7", "--eval_steps", "9", "--run_name", "r"])
    aliases = parse_args(["--model_path", "m", "--data_dir", "d", "--out_dir", "out", "--train_limit", "5",
                          "--val_limit", "3", "--lora_rank", "8", "--learning_rate", "2e-6", "--num_train_epochs", "1",
                          "--save_steps", "7", "--eval_steps", "9", "--run_name", "r"])
    assert canonical[0] == aliases[0] and canonical[1].to_dict() == aliases[1].to_dict()
    script, config = canonical
    assert (script.model, script.data_path, script.limit, script.eval_limit, script.lora_r) == ("m", "d", 5, 3, 8)
    assert script.checkpoint_dir == str(Path("out") / "trl" / "GRPO_Movies")
    assert (config.output_dir, config.learning_rate, config.num_train_epochs) == ("out", 2e-6, 1)
    assert (config.save_steps, config.eval_steps, config.run_name) == (7, 9, "r")
    # the stage's defaults: verl's settings, float32 weights with bf16 autocast only on a GPU
    script, config = parse_args(["--model", "m", "--data_path", "d"])
    assert (config.learning_rate, config.beta, config.num_generations, config.num_train_epochs) == (1e-6, 0.001, 8, 2)
    prompts_per_step = config.per_device_train_batch_size * config.gradient_accumulation_steps // config.num_generations
    assert prompts_per_step == 32 and config.per_device_train_batch_size // config.num_generations == 4
    assert (config.output_dir, config.run_name, script.checkpoint_dir) == ("ckpt", "GRPO_Movies",
                                                                           str(Path("ckpt/trl/GRPO_Movies")))
    assert (script.eval_limit, script.lora_r, script.max_prompt_length) == (256, 0, 2048)


def test_a_yaml_recipe_sets_any_field_and_flags_win(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data_name: Books\nlearning_rate: 3.0e-6\nbeta: 0.01\nlora_r: 4\nmax_completion_length: 64\n")
    script, config = parse_args(["--model", "m", "--data_path", "d", "--config", str(recipe), "--beta", "0.02"])
    assert (script.data_name, script.lora_r, script.checkpoint_dir) == ("Books", 4, str(Path("ckpt/trl/GRPO_Books")))
    assert (config.learning_rate, config.beta, config.max_completion_length) == (3e-6, 0.02, 64)


def test_help_shows_the_siren_settings_with_their_defaults(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = capsys.readouterr().out
    assert "\n    python -m siren.grpo_trl --model ckpt/tiny-qwen3 --data_path " in text
    flat = " ".join(text.split())
    assert "--model MODEL, --model_path MODEL" in flat and "--data_dir DATA_PATH" in flat
    assert "--lora_rank LORA_R" in flat and "--out_dir OUTPUT_DIR" in flat and "--val_limit EVAL_LIMIT" in flat
    assert "LoRA rank (all linear layers); 0 = full fine-tuning (default: 0)" in flat
    assert "(default: 0.001)" in flat and "%(default)" not in flat


def test_one_step_at_the_default_lr_moves_the_policy_weights(tiny_model_dir, one_thread):
    """Full fine-tuning at --lr's default: the policy keeps float32 weights, so one AdamW step under
    bf16 autocast (what GRPOConfig(bf16=True) does on a GPU) changes them; on bf16 weights the same
    step rounds away for nearly all of them."""
    import torch

    from siren.grpo_trl import load_policy

    lr = parse_args(["--model_path", str(tiny_model_dir), "--data_dir", "unused"])[1].learning_rate

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


def test_the_config_pickles_as_every_trl_checkpoint_stores_it():
    """The trainer saves its config with torch.save into each checkpoint: a class defined inside a
    function would fail there, at the first checkpoint of a real run."""
    import pickle

    _, config = parse_args(["--model", "m", "--data_path", "d", "--output_dir", "out"])
    assert pickle.loads(pickle.dumps(config)).output_dir == "out"
