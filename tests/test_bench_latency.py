"""scripts/bench_latency.py and siren.tools.latency: AO vs CoT timing on the tiny model; the Qwen3-4B shape."""

from __future__ import annotations

import json

import pytest
from conftest import assert_refused, run_in_process

from siren.prompts import build_messages
from siren.tools.latency import RANDOM_INIT_SHAPES, random_init_config


@pytest.mark.slow
def test_bench_end_to_end_on_tiny_model(tiny_model_dir, verl_dir, tmp_path):
    out_dir = tmp_path / "bench"
    proc = run_in_process("scripts/bench_latency.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                      "--num_samples", "3", "--warmup", "1", "--cot_tokens", "5", "--device", "cpu",
                      "--ao_engines", "eager", "compiled", "--compile_backend", "aot_eager", "--ao_batch_sizes", "1", "2",
                      "--cot_caches", "dynamic", "static", "--pad_to_multiple_of", "32",
                      "--out_dir", str(out_dir))  # --device: float32 and "cpu" below hold on a CUDA machine too
    assert "speedup" in proc.stdout
    report = json.loads((out_dir / "latency.json").read_text())
    assert report["n"] == 3 and report["cot_tokens"] == 5 and report["dtype"] == "float32"
    rows = {(r["decoding"], r["engine"], r["batch_size"]): r for r in report["rows"]}
    assert set(rows) == {("ao", "eager", 1), ("ao", "eager", 2), ("ao", "compiled", 1), ("ao", "compiled", 2),
                         ("cot", "hf-dynamic-cache", 1), ("cot", "hf-static-cache", 1)}
    for (decoding, _engine, _batch), row in rows.items():
        assert row["device"] == "cpu" and row["dtype"] == "float32" and row["n"] == 3 and row["ms_per_sample"] > 0
        assert row["samples_per_s"] == pytest.approx(1000.0 / row["ms_per_sample"])
        assert row["generated_tokens_per_sample"] == (5.0 if decoding == "cot" else 1.0)
    assert rows[("cot", "hf-dynamic-cache", 1)]["ms_per_token"] == pytest.approx(
        rows[("cot", "hf-dynamic-cache", 1)]["ms_per_sample"] / 5)
    assert rows[("ao", "compiled", 2)]["warmup_seconds"] > 0  # compilation is reported apart
    # Speedups only between rows measured the same way: CoT is per sample, so only batch-1 AO rows.
    assert {(s["cot_engine"], s["ao_engine"], s["batch_size"]) for s in report["speedups"]} == {
        (cot, ao, 1) for cot in ("hf-dynamic-cache", "hf-static-cache") for ao in ("eager", "compiled")}
    assert report["ao"]["batch_size"] == 1 and report["cot"]["decoding"] == "cot"
    assert report["speedup"] == pytest.approx(report["cot"]["ms_per_sample"] / report["ao"]["ms_per_sample"])
    # The AO context is the CoT prompt plus the empty think block and <answer>.
    assert report["prompt_tokens_mean"]["ao"] > report["prompt_tokens_mean"]["cot"]
    assert str(verl_dir / "test.parquet") in report["prompts_from"]
    assert json.loads((out_dir / "manifest.json").read_text())["script"] == "bench_latency.py"

    refused = run_in_process("scripts/bench_latency.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                         "--out_dir", str(out_dir), check=False)
    assert_refused(refused, "--overwrite")


def test_free_length_cot_stops_at_eos_and_ao_picks_a_rating(tiny_model_dir):
    import torch

    from siren.answer_only_engines import EagerAO
    from siren.modeling import load_causal_lm
    from siren.prompts import answer_only_context, chat_prompt_text
    from siren.tokenization import load_tokenizer, rating_token_ids
    from siren.tools.latency import time_answer_only, time_cot

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    prompt = chat_prompt_text(tokenizer, build_messages("Movies", "A, Drama, 4.0", "B, Comedy"))
    # With the first greedy token declared EOS, free-length CoT stops after exactly one token.
    with torch.inference_mode():
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        first_token = int(model(input_ids=ids).logits[0, -1].argmax())
    free = time_cot(model, tokenizer, [prompt], "cpu", cot_tokens=None, max_new_tokens=4, eos_token_ids=[first_token],
                    warmup=0)
    assert free.generated_tokens == [1]
    forced = time_cot(model, tokenizer, [prompt], "cpu", cot_tokens=3, max_new_tokens=4, eos_token_ids=[first_token],
                      warmup=0)
    assert forced.generated_tokens == [3] and forced.engine == "hf-dynamic-cache"

    engine = EagerAO(model, tokenizer, rating_token_ids(tokenizer))
    timing, choices = time_answer_only(engine, [answer_only_context(prompt)], "cpu", warmup=0)
    assert timing.generated_tokens == [1] and 0 <= choices[0] < 5
    assert timing.summary("cpu", "float32")["n"] == 1


def test_static_cache_cot_equals_dynamic_cache_greedy_decoding(tiny_model_dir, verl_dir, one_thread):
    """The static KV cache (on a GPU, with transformers' compiled decode step) and left padding to a
    shape bucket change how CoT is computed, not what it generates."""
    import torch

    from siren.modeling import load_causal_lm
    from siren.prompts import chat_prompt_text
    from siren.tokenization import load_tokenizer
    from siren.tools.latency import cot_generate_kwargs
    from siren.verl_data import load_split_rows

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    for row in load_split_rows(verl_dir, "test", limit=2):
        prompt = chat_prompt_text(tokenizer, row["prompt"])
        outputs = []
        for cache, multiple in (("dynamic", None), ("static", 64)):
            encoded = tokenizer(prompt, return_tensors="pt", add_special_tokens=False, padding=bool(multiple),
                                pad_to_multiple_of=multiple, padding_side="left")
            with torch.inference_mode():
                output = model.generate(**encoded, max_new_tokens=12, do_sample=False, temperature=None, top_p=None,
                                        top_k=None, pad_token_id=tokenizer.pad_token_id, **cot_generate_kwargs(cache))
            outputs.append(output[0, encoded["input_ids"].shape[1]:].tolist())
        assert outputs[0] == outputs[1] and len(outputs[0]) > 1


def test_random_init_is_refused_without_cuda(tiny_model_dir, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = run_in_process("scripts/bench_latency.py", "--model", str(tiny_model_dir), "--random_init", "qwen3-4b",
                      "--out_dir", str(tmp_path / "gpu"), check=False)
    assert_refused(proc, "needs a CUDA device")
    assert not (tmp_path / "gpu").exists()


def test_bad_arguments(tiny_model_dir, tmp_path):
    no_model = run_in_process("scripts/bench_latency.py", "--model", str(tmp_path / "missing"),
                          "--out_dir", str(tmp_path / "out"), check=False)
    assert no_model.returncode == 2 and no_model.stderr.startswith("error:")
    zero = run_in_process("scripts/bench_latency.py", "--num_samples", "0", "--out_dir", str(tmp_path / "out"), check=False)
    assert_refused(zero, "--limit/--num_samples: must be at least 1", only_line=True)


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
    run_in_process("scripts/bench_latency.py", "--model", str(tiny_model_dir), "--random_init", "qwen3-4b",
               "--data_path", str(verl_dir), "--num_samples", "2", "--warmup", "1", "--cot_tokens", "8",
               "--out_dir", str(out_dir))
    report = json.loads((out_dir / "latency.json").read_text())
    assert report["dtype"] == "bfloat16" and report["model"] == "random-init qwen3-4b"
    assert report["cot"]["generated_tokens_per_sample"] == 8.0 and report["speedup"] > 1.0
    engines = {(r["decoding"], r["engine"]) for r in report["rows"]}
    assert {("ao", "eager"), ("ao", "compiled"), ("cot", "hf-dynamic-cache"), ("cot", "hf-static-cache")} <= engines
