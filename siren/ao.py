"""Stage 6, answer-only (AO) inference: the model reads prompt + empty think + `<answer>` and the
next token is the rating.

Two decodings of that one next-token distribution:
  constrained  argmax over the tokens "1".."5" (ids from the tokenizer); cannot be invalid.
  greedy       argmax over the whole vocabulary, decoded and parsed (the authors' way); a token that
               is not a rating 1-5 is invalid and counted.
Both also give the expected rating sum_r p(r) * r, with p the next-token distribution renormalised
over the five rating tokens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from siren import SirenError
from siren.answer import RATING_MAX, RATING_MIN, parse_rating

if TYPE_CHECKING:
    import torch

DECODES = ("constrained", "greedy")


def parse_greedy_token(text: str) -> float | None:
    """The rating a one-token greedy answer stands for, or None (not a number, or outside 1-5)."""
    rating = parse_rating(text)
    if rating is None or not RATING_MIN <= rating <= RATING_MAX:
        return None
    return rating


# --------------------------------------------------------------------------------------------------
# Model


def check_adapter_matches(base_model, adapter_dir: str | os.PathLike) -> None:
    """Refuse an adapter trained on another base: recorded fingerprint and every LoRA weight's shape."""
    from safetensors import safe_open

    from siren.modeling import base_fingerprint

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SirenError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json)")
    fingerprint_path = adapter_dir / "base_model.json"
    if fingerprint_path.is_file():
        from siren.io import read_json

        recorded = read_json(fingerprint_path)
        actual = base_fingerprint(base_model.config)
        differing = [k for k in recorded if recorded[k] != actual.get(k)]
        if differing:
            key = differing[0]
            raise SirenError(
                f"adapter {adapter_dir} was trained on a different base model: {key} {recorded[key]} in the "
                f"adapter's base, {actual.get(key)} in this model"
            )
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    modules = dict(base_model.named_modules())
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
            module = modules.get(module_name)
            if module is None:
                raise SirenError(f"adapter {adapter_dir} has weights for {module_name}, which this base model lacks")
            shape = handle.get_slice(key).get_shape()
            in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
            expected = shape[1] if ".lora_A." in key else shape[0]
            actual = in_features if ".lora_A." in key else out_features
            if expected != actual:
                raise SirenError(
                    f"adapter {adapter_dir} does not fit this base model: {module_name} has "
                    f"{'in' if '.lora_A.' in key else 'out'}_features {actual} here but {expected} in the adapter"
                )


def load_ao_model(model_path: str | os.PathLike, adapter_path: str | os.PathLike | None, dtype: torch.dtype, device):
    """A causal LM ready for AO inference: a merged model, or a base with a LoRA adapter merged in."""
    from siren.modeling import load_causal_lm

    model = load_causal_lm(model_path, dtype, device)
    if adapter_path is not None:
        from peft import PeftModel

        check_adapter_matches(model, adapter_path)
        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload().eval()
    return model


def next_token_logits(model, tokenizer, prompts: list[str], device) -> torch.Tensor:
    """Logits `[B, V]` of the token after each prompt (float32), one forward pass, left padding.

    Position ids are counted from each row's first real token, so a row gives the same logits
    whatever it is batched with (the multi-process test relies on it).
    """
    import torch

    encoded = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt", padding_side="left")
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded["attention_mask"].to(device)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=False, logits_to_keep=1)
    return outputs.logits[:, -1, :].float()


def model_label(model_path: str | os.PathLike, adapter_path: str | os.PathLike | None = None) -> str:
    """A short name for a model directory; `<run>/merged` is named after `<run>`."""
    def name_of(path) -> str:
        path = Path(path).resolve()
        return path.parent.name if path.name in ("merged", "adapter") else path.name

    label = name_of(model_path)
    return f"{label}+{name_of(adapter_path)}" if adapter_path else label


def default_out_dir(model_path, adapter_path, split: str, decode: str) -> Path:
    """`results_ao/<model>/<split>-<decode>`: the path says which model, split and decoding made it."""
    return Path("results_ao") / model_label(model_path, adapter_path) / f"{split}-{decode}"


def prediction_metrics(predictions, expected, labels, invalid_fill: float | None = None) -> dict:
    """metrics.json's "predictions": `ao` (decoded ratings; None = invalid) and `ao_expected`."""
    from siren.metrics import rating_metrics

    return {
        "ao": rating_metrics(predictions, labels, invalid_fill=invalid_fill),
        "ao_expected": rating_metrics(expected, labels),
    }
