"""Every stage script's --help, run in this process as `python SCRIPT --help` runs it: it exits 0, shows
the command of its docstring on its own line (a raw docstring), the shared flag names with their
aliases, and each default once (the shared help formatter appends it; none is written by hand)."""

from __future__ import annotations

import re

import pytest
from conftest import run_in_process

# script -> (text that stands as is in the help, text that stands in it once lines are unwrapped)
HELP = {
    "extract_last_hidden_ddp.py": (
        ["\n    accelerate launch --num_processes 1 extract_last_hidden_ddp.py --model"],
        ["--output_dir OUTPUT_DIR, --out_dir OUTPUT_DIR", "(default: float32)"]),
    "inference_train_ddp.py": (
        ["\n    accelerate launch --num_processes 1 inference_train_ddp.py --model"],
        ["--model MODEL, --model_path MODEL", "--output_dir OUTPUT_DIR, --out_dir OUTPUT_DIR", "(default: 8)",
         "(default: train)"]),
    "train_hidden_mask.py": (
        [],
        ["--kd_ratio", "default: 1.0", "--loss_type", "cosine", "--peft", "KV", "--training_ratio", "default: 0.1",
         "constant_with_warmup", "default: 2048"]),
    "generate_interest_sketch.py": (
        ["\n    python generate_interest_sketch.py --category Movies --encoder_model minilm"],
        ["--data_category", "--meta_path", "--history_path", "--output_dir", "--n_clusters", "--top_k",
         "--encoder_model", "--kmeans_backend", "--namer", "--sketch_rule", "--max_topics_per_list", "minilm",
         "(default: BAAI/bge-m3)"]),
    "scripts/build_category.py": (
        [],
        ["--category", "--reviews", "--meta", "--output_root", "--k_core", "--item_k_core", "--min_history",
         "--max_users", "--seed", "--since", "--until", "--max_missing_meta", "--overwrite", "(default: 5)",
         "(default: 0.05)"]),
    "grpo_trl.py": (
        ["\n    python grpo_trl.py --model ckpt/tiny-qwen3 --data_path "],
        ["--model MODEL_NAME_OR_PATH, --model_path MODEL_NAME_OR_PATH", "--data_dir DATA_PATH", "--lora_rank LORA_R",
         "--out_dir OUTPUT_DIR", "--val_limit EVAL_LIMIT", "--prompts_per_step PROMPTS_PER_STEP", "(default: 0.001)"]),
    "preprocess_grpo.py": (
        ["\n    python preprocess_grpo.py --category Movies --max_history 10 --use_long_history True \\\n"],
        ["(default: 10)"]),
}


@pytest.mark.parametrize("script", sorted(HELP))
def test_help_shows_the_command_the_flags_and_each_default_once(script):
    text = run_in_process(script, "--help").stdout
    raw, unwrapped = HELP[script]
    flat = " ".join(text.split())
    for expected in raw:
        assert expected in text, expected
    for expected in unwrapped:
        assert expected in flat, expected
    assert "%(default)" not in text and "(default: None)" not in flat
    assert not re.search(r"\(default: [^()]*\)\s*\(default: ", flat)
    if script == "generate_interest_sketch.py":
        assert flat.count("(default: 20)") == 1  # the one setting of 20, its default said once
