"""LoRA adapters: which modules of a model get them (`--peft`), and folding one into its base.

Merging inside a bf16 model adds the low-rank update to bf16 weights: the update is rounded to
bf16, then the sum is rounded again, so the merged model differs from base + adapter by more than
one bf16 rounding. `merge_lora_float32` loads the base in float32, forms W + scale * B @ A there,
and rounds the sum once, to the dtype the base was saved in. Stage 5
(`siren.alignment.save_merged`) merges this way, and so does verl's LoRA merge (`siren.grpo_verl`).
"""

from __future__ import annotations

import os

from siren import SirenError

# LoRA target families, as the module names Llama-style decoders (Qwen2/3, Llama, Mistral) use.
# `all-linear` means every linear layer inside the decoder blocks (not the LM head).
PEFT_FAMILIES = {
    "KV": ("k_proj", "v_proj"),
    "QKV": ("q_proj", "k_proj", "v_proj"),
    "QV": ("q_proj", "v_proj"),
    "FFN": ("gate_proj", "up_proj", "down_proj"),
    "all-linear": None,
}


def linear_module_names(model) -> set[str]:
    """Leaf names of the linear layers inside the model, without the LM head."""
    import torch

    output_layer = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output_layer
    }


def lora_target_modules(model, peft: str) -> list[str]:
    """Map `--peft` to the module names this model actually has; an error names what it has."""
    if peft not in PEFT_FAMILIES:
        raise SirenError(f"unknown --peft {peft!r}; expected one of {', '.join(PEFT_FAMILIES)}")
    found = linear_module_names(model)
    wanted = PEFT_FAMILIES[peft]
    if wanted is None:
        if not found:
            raise SirenError("the model has no linear layers to put LoRA adapters on")
        return sorted(found)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise SirenError(
            f"--peft {peft} needs modules {', '.join(wanted)}, but this model has no {', '.join(missing)} "
            f"(its linear layers: {', '.join(sorted(found)) or 'none'})"
        )
    return list(wanted)


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
