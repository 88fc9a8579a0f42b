"""siren.grpo_memory: the parameter count and the memory arithmetic behind stage 3's offload choice
and the TRL backend's refusal (no GPU needed: a test asserts the arithmetic)."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO

from siren import SirenError
from siren.grpo_memory import (
    CUDA_OVERHEAD_GIB,
    GIB,
    choose_offload,
    model_shape,
    shape_of,
    trl_estimate,
    verl_estimate,
    verl_table,
)

QWEN3_4B = shape_of("qwen3-4b")
PAPER_RUN = dict(gpu_memory_utilization=0.6, micro_batch=4, max_prompt_length=2048, max_response_length=512)


def test_parameter_count_from_headers_and_from_config_match_the_model(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from siren.tools.latency import RANDOM_INIT_SHAPES

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model_shape(tiny_model_dir).parameters == model.num_parameters()  # safetensors headers
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert model_shape(tmp_path).parameters == model.num_parameters()  # config.json arithmetic, no weights
    with torch.device("meta"):
        qwen3_4b = Qwen3ForCausalLM(Qwen3Config(**RANDOM_INIT_SHAPES["qwen3-4b"]))
    assert QWEN3_4B.parameters == qwen3_4b.num_parameters() == 4_022_468_096


def test_lora_parameters_are_what_peft_adds_on_all_linear_layers(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                LoraConfig(r=4, target_modules="all-linear"))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert model_shape(tiny_model_dir).lora_parameters(4) == trainable


def test_verl_arithmetic_at_the_4b_shape():
    """fp32 weights 4 bytes, AdamW 8 bytes, sharded over every GPU; the rollout keeps what is not offloaded
    beside vLLM's share; the update needs it all back."""
    params = QWEN3_4B.parameters
    one = verl_estimate(QWEN3_4B, gpus=1, gpus_per_node=1, card_gib=80, offload="none", **PAPER_RUN)
    assert one.weights == pytest.approx(4 * params / GIB) and one.adam == pytest.approx(8 * params / GIB)
    assert one.rollout == pytest.approx(one.weights + one.adam + 0.6 * 80 + CUDA_OVERHEAD_GIB)
    assert one.update == pytest.approx(one.weights + one.gradients + one.adam + one.activations + CUDA_OVERHEAD_GIB)
    assert not one.fits  # at one GPU, vLLM's share does not fit beside the weights and AdamW state
    for level, rollout in (("optimizer", one.weights), ("all", 0.0)):
        offloaded = verl_estimate(QWEN3_4B, gpus=1, gpus_per_node=1, card_gib=80, offload=level, **PAPER_RUN)
        assert offloaded.update == pytest.approx(one.update)  # the update loads everything back
        assert offloaded.rollout == pytest.approx(rollout + 48 + CUDA_OVERHEAD_GIB)
    eight = verl_estimate(QWEN3_4B, gpus=16, gpus_per_node=8, card_gib=80, offload="none", **PAPER_RUN)
    assert eight.weights == pytest.approx(one.weights / 16)
    assert eight.host_per_node == pytest.approx(4 * params / 2 / GIB)  # the CPU-resident reference, half per node


@pytest.mark.parametrize("gpus, card, utilization, expected", [
    (1, 80, 0.6, "optimizer"), (2, 80, 0.6, "none"), (8, 80, 0.6, "none"), (2, 48, 0.6, "optimizer"),
    (2, 80, 0.9, "all"),  # vLLM's larger share leaves no room for the weights either
])
def test_auto_chooses_the_lightest_offload_that_fits(gpus, card, utilization, expected):
    settings = {**PAPER_RUN, "gpu_memory_utilization": utilization}
    estimate, why = choose_offload(QWEN3_4B, "auto", gpus=gpus, gpus_per_node=gpus, card_gib=card, **settings)
    assert estimate.offload == expected and estimate.fits and "auto" in why
    levels = ["none", "optimizer", "all"]
    for lighter in levels[: levels.index(expected)]:
        assert not verl_estimate(QWEN3_4B, gpus=gpus, gpus_per_node=gpus, card_gib=card, offload=lighter,
                                 **settings).fits
    chosen, why = choose_offload(QWEN3_4B, "none", gpus=gpus, gpus_per_node=gpus, card_gib=card, **settings)
    assert chosen.offload == "none" and why == "OFFLOAD=none as set"


def test_a_run_that_cannot_fit_is_refused_with_its_estimate():
    with pytest.raises(SirenError, match=r"does not fit even with all offloading: offload=all: update 72\.\d GiB.*"
                                         r"LORA_RANK"):
        choose_offload(QWEN3_4B, "auto", gpus=1, gpus_per_node=1, card_gib=40, **PAPER_RUN)
    lora, _ = choose_offload(QWEN3_4B, "auto", gpus=1, gpus_per_node=1, card_gib=40, lora_rank=32, **PAPER_RUN)
    assert lora.fits and lora.adam < 1


TRL_RUN = dict(optim="adamw_torch", micro_batch=4, generation_batch=8, max_prompt_length=2048,
               max_completion_length=512)


@pytest.mark.parametrize("card, dtype, lora, beta, fits", [
    (80, "float32", 0, 0.001, False),   # weights + gradients + AdamW + a float32 reference model
    (80, "float32", 0, 0.0, True),      # beta 0: no reference model
    (48, "float32", 0, 0.0, False),
    (48, "float32", 16, 0.001, True),   # LoRA: AdamW and gradients of the adapter only, no reference
    (24, "float32", 16, 0.001, False),
    (24, "bfloat16", 16, 0.001, True),
])
def test_trl_one_device_at_the_4b_shape(card, dtype, lora, beta, fits):
    estimate = trl_estimate(QWEN3_4B, card_gib=card, dtype=dtype, lora_rank=lora, beta=beta, **TRL_RUN)
    assert estimate.fits is fits
    weights = QWEN3_4B.parameters * (4 if dtype == "float32" else 2) / GIB
    assert estimate.weights == pytest.approx(weights)
    assert estimate.reference == pytest.approx(weights if beta and not lora else 0.0)
    eight_bit = trl_estimate(QWEN3_4B, card_gib=card, dtype=dtype, lora_rank=lora, beta=beta,
                             **{**TRL_RUN, "optim": "adamw_8bit"})
    assert eight_bit.optimizer == pytest.approx(estimate.optimizer / 4)


def test_the_generation_batch_is_what_decides_the_kv_cache():
    small = trl_estimate(QWEN3_4B, card_gib=80, dtype="float32", lora_rank=0, beta=0.0, **TRL_RUN)
    big = trl_estimate(QWEN3_4B, card_gib=80, dtype="float32", lora_rank=0, beta=0.0,
                       **{**TRL_RUN, "generation_batch": 256})
    kv_per_token = 36 * 2 * 8 * 128 * 2  # layers x (K, V) x kv heads x head dim x bf16
    assert QWEN3_4B.kv_bytes_per_token == kv_per_token
    prefill_per_sequence = 2048 * (2 * 9728 + 4 * 2560) * 2  # prompt tokens x the MLP's and attention's widths, bf16
    assert big.generation - small.generation == pytest.approx(248 * (2560 * kv_per_token + prefill_per_sequence) / GIB)
    assert not big.fits and small.fits


def test_the_docs_4b_table_is_what_the_estimate_says():
    rows = [line for line in (REPO / "docs" / "pipeline.md").read_text().splitlines()
            if re.match(r"\| (1|2|4|8|16) \| (none|optimizer|all|does not fit) \|", line)]
    expected = verl_table(QWEN3_4B, [1, 2, 4, 8, 16], 80.0, train_rows=22_097, **PAPER_RUN).splitlines()[2:]
    assert rows == expected


def test_module_cli_prints_the_tables(capsys):
    from siren.grpo_memory import main

    main(["trl", "--gpu_memory_gib", "80"])
    out = capsys.readouterr().out
    assert "80 GiB, full, beta 0: fits" in out and "80 GiB, full, beta 0.001: does not fit" in out
    main(["verl", "--gpus", "1"])
    assert "| 1 | optimizer |" in capsys.readouterr().out


def test_a_folder_without_config_is_one_line(tmp_path):
    with pytest.raises(SirenError, match="not a model folder"):
        model_shape(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x"}))
    with pytest.raises(SirenError, match="config.json has no 'num_attention_heads': not a decoder shape"):
        model_shape(tmp_path)
