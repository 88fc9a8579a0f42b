"""Fold a LoRA adapter into its base model in float32, then store the result in the base's dtype.

Merging inside a bf16 model adds the low-rank update to bf16 weights: the update is rounded to
bf16, then the sum is rounded again, so the merged model differs from base + adapter by more than
one bf16 rounding. Here the base is loaded in float32, W + scale * B @ A is formed there, and the
sum is rounded once, to the dtype the base was saved in. Stage 5 (`siren.alignment.save_merged`)
merges this way; verl's LoRA merge (`siren.grpo_verl`) needs the same.
"""

from __future__ import annotations

import os


def saved_dtype(model_dir: str | os.PathLike):
    """The dtype a model folder's config.json records (float32 when it records none)."""
    import torch
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir)).dtype or torch.float32


def merge_lora_float32(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike):
    """The model of `base_dir` with the PEFT adapter of `adapter_dir` merged in, in the base's dtype."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    dtype = saved_dtype(base_dir)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return merged.to(dtype)
