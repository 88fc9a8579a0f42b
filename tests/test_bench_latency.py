"""scripts/bench_latency.py and siren.latency: AO vs CoT timing on the tiny model; the Qwen3-4B shape."""

from __future__ import annotations

import json

import pytest
from conftest import run_script

from siren.latency import RANDOM_INIT_SHAPES, random_init_config
from siren.prompts import build_messages


@pytest.mark.slow
def test_bench_end_to_end_on_tiny_model(tiny_model_dir, verl_dir, tmp_path):
    out_dir = tmp_path / "bench"
    proc = run_script("scripts/bench_latency.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                      "--num_samples", "2", "--warmup", "1", "--cot_tokens", "5", "--device", "cpu",
                      "--out_dir", str(out_dir))  # --device: float32 and "cpu" below hold on a CUDA machine too
    assert "speedup" in proc.stdout
    report = json.loads((out_dir / "latency.json").read_text())
    assert report["n"] == 2 and report["cot_tokens"] == 5 and report["dtype"] == "float32"
    assert report["cot"]["generated_tokens_per_sample"] == 5.0
    assert report["ao"]["generated_tokens_per_sample"] == 1.0
    for mode in ("cot", "ao"):
        entry = report[mode]
        assert set(entry) == {"ms_per_sample", "samples_per_s", "generated_tokens_per_sample", "device", "n"}
        assert entry["ms_per_sample"] > 0 and entry["device"] == "cpu"
        assert entry["samples_per_s"] == pytest.approx(1000.0 / entry["ms_per_sample"])
    assert report["speedup"] == pytest.approx(report["cot"]["ms_per_sample"] / report["ao"]["ms_per_sample"])
    # The AO context is the CoT prompt plus the empty think block and <answer>.
    assert report["prompt_tokens_mean"]["ao"] > report["prompt_tokens_mean"]["cot"]
    assert str(verl_dir / "test.parquet") in report["prompts_from"]
    assert json.loads((out_dir / "manifest.json").read_text())["script"] == "bench_latency.py"

    refused = run_script("scripts/bench_latency.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                         "--out_dir", str(out_dir), check=False)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr


def test_free_length_cot_stops_at_eos_and_ao_picks_a_rating(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from siren.latency import time_answer_only, time_cot
    from siren.prompts import answer_only_context, chat_prompt_text
    from siren.tokenization import load_tokenizer, rating_token_ids

    tokenizer = load_tokenizer(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt = chat_prompt_text(tokenizer, build_messages("Movies", "A, Drama, 4.0", "B, Comedy"))
    encoded = [tokenizer(prompt, return_tensors="pt")["input_ids"]]
    # With the first greedy token declared EOS, free-length CoT stops after exactly one token.
    with torch.inference_mode():
        first_token = int(model(input_ids=encoded[0]).logits[0, -1].argmax())
    free = time_cot(model, encoded, "cpu", cot_tokens=None, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id,
                    eos_token_ids=[first_token], warmup=0)
    assert free.generated_tokens == [1]
    forced = time_cot(model, encoded, "cpu", cot_tokens=3, max_new_tokens=4, pad_token_id=tokenizer.pad_token_id,
                      eos_token_ids=[first_token], warmup=0)
    assert forced.generated_tokens == [3]

    ao_encoded = [tokenizer(answer_only_context(prompt), return_tensors="pt")["input_ids"]]
    rating_ids = list(rating_token_ids(tokenizer).values())
    timing, choices = time_answer_only(model, ao_encoded, rating_ids, "cpu", warmup=0)
    assert timing.generated_tokens == [1] and 0 <= choices[0] < len(rating_ids)
    assert timing.summary("cpu")["n"] == 1


def test_random_init_is_refused_without_cuda(tiny_model_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_script("scripts/bench_latency.py", "--model", str(tiny_model_dir), "--random_init", "qwen3-4b",
                      "--out_dir", str(tmp_path / "gpu"), check=False)
    assert proc.returncode == 2 and "needs a CUDA device" in proc.stderr
    assert not (tmp_path / "gpu").exists()


def test_bad_arguments(tiny_model_dir, tmp_path):
    no_model = run_script("scripts/bench_latency.py", "--model", str(tmp_path / "missing"),
                          "--out_dir", str(tmp_path / "out"), check=False)
    assert no_model.returncode == 2 and no_model.stderr.startswith("error:")
    zero = run_script("scripts/bench_latency.py", "--num_samples", "0", "--out_dir", str(tmp_path / "out"), check=False)
    assert zero.returncode == 2 and "--num_samples" in zero.stderr


def test_qwen3_4b_shape_has_qwen3_4b_parameter_count(tiny_model_dir):
    import torch
    from transformers import Qwen3ForCausalLM

    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    config = random_init_config("qwen3-4b", tokenizer)
    assert config.eos_token_id == tokenizer.eos_token_id
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    # Qwen3-4B's model card: 4.0B parameters (tied embeddings counted once).
    n_params = sum(p.numel() for p in model.parameters())
    assert 4.0e9 < n_params < 4.05e9
    assert RANDOM_INIT_SHAPES["qwen3-4b"]["num_hidden_layers"] == len(model.model.layers) == 36


@pytest.mark.gpu
def test_random_init_qwen3_4b_on_gpu(tiny_model_dir, verl_dir, tmp_path):
    out_dir = tmp_path / "gpu"
    run_script("scripts/bench_latency.py", "--model", str(tiny_model_dir), "--random_init", "qwen3-4b",
               "--data_path", str(verl_dir), "--num_samples", "2", "--warmup", "1", "--cot_tokens", "8",
               "--out_dir", str(out_dir))
    report = json.loads((out_dir / "latency.json").read_text())
    assert report["dtype"] == "bfloat16" and report["model"] == "random-init qwen3-4b"
    assert report["cot"]["generated_tokens_per_sample"] == 8.0 and report["speedup"] > 1.0
