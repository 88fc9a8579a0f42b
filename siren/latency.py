"""Latency of answer-only (AO) against chain-of-thought (CoT) decoding on the same model and prompts.

AO is what stage 6 does: one forward pass over prompt + empty think + `<answer>`, then the most
likely of the rating tokens (one generated token). CoT is greedy generation from the chat prompt,
optionally forced to a fixed length so the ratio matches the paper's ~238-token reasoning.
Both are timed one sample at a time (the paper's per-sample figures) on the device clock:
CUDA work is synchronised before the timer stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from siren import SirenError

# Qwen3-4B's real shape (its config.json), so a random model costs what the real one costs.
RANDOM_INIT_SHAPES = {
    "qwen3-4b": dict(
        hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=9728, vocab_size=151936, tie_word_embeddings=True,
        max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
    ),
}


def random_init_config(name: str, tokenizer=None):
    """A Qwen3Config of `name`'s shape, with special-token ids taken from `tokenizer` if given."""
    from transformers import Qwen3Config

    if name not in RANDOM_INIT_SHAPES:
        raise SirenError(f"unknown --random_init {name!r}; choose from {', '.join(RANDOM_INIT_SHAPES)}")
    special = {}
    if tokenizer is not None:
        special = dict(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.pad_token_id)
    return Qwen3Config(**RANDOM_INIT_SHAPES[name], **special)


def build_random_model(name: str, tokenizer, device: str, dtype, seed: int = 0):
    """A randomly initialised model of a real shape, created directly on `device` in `dtype`."""
    import torch
    from transformers import Qwen3ForCausalLM

    if not device.startswith("cuda"):
        raise SirenError(f"--random_init {name} builds a multi-GB model and needs a CUDA device "
                         "(none is available); on CPU pass --model with the tiny model instead")
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(random_init_config(name, tokenizer), dtype=dtype)
    return model.eval()


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


@dataclass
class Timing:
    """Seconds and generated tokens of each timed sample, in prompt order."""

    seconds: list[float]
    generated_tokens: list[int]

    def summary(self, device: str) -> dict:
        """The latency dict stages 4a and 6 write: ms/sample, samples/s, generated tokens/sample, device, n."""
        from siren.metrics import latency_summary

        return latency_summary(self.seconds, self.generated_tokens, device)


def _timed(step, inputs: list, device: str, warmup: int, desc: str, progress: bool) -> tuple[list, list[float]]:
    """Run `step` on the first `warmup` inputs untimed, then time each input on the device clock."""
    import torch
    from tqdm.auto import tqdm

    outputs, seconds = [], []
    with torch.inference_mode():
        for input_ids in inputs[:warmup]:
            step(input_ids)
        for input_ids in tqdm(inputs, desc=desc, disable=not progress):
            _synchronize(device)
            start = time.perf_counter()
            outputs.append(step(input_ids))
            _synchronize(device)
            seconds.append(time.perf_counter() - start)
    return outputs, seconds


def time_answer_only(model, encoded: list, rating_ids: list[int], device: str, warmup: int = 2,
                     progress: bool = False) -> tuple[Timing, list[int]]:
    """One forward pass per AO context; the argmax over the rating tokens is the one generated token.

    Returns the timing and, per sample, the position in `rating_ids` of the chosen rating.
    """
    import torch

    rating_index = torch.tensor(rating_ids, device=device)

    def step(input_ids) -> int:
        logits = model(input_ids=input_ids, logits_to_keep=1).logits[0, -1]
        return int(torch.argmax(logits.index_select(0, rating_index)))

    choices, seconds = _timed(step, encoded, device, warmup, "answer-only", progress)
    return Timing(seconds, [1] * len(encoded)), choices


def time_cot(model, encoded: list, device: str, *, cot_tokens: int | None, max_new_tokens: int,
             pad_token_id: int, eos_token_ids: list[int], warmup: int = 2, progress: bool = False) -> Timing:
    """Greedy generation per CoT prompt; `cot_tokens` forces exactly that many new tokens (EOS blocked)."""
    import torch

    if cot_tokens:
        # min == max with EOS suppressed: every sample generates exactly cot_tokens tokens.
        lengths = dict(min_new_tokens=cot_tokens, max_new_tokens=cot_tokens, suppress_tokens=list(eos_token_ids))
    else:
        lengths = dict(max_new_tokens=max_new_tokens)

    def step(input_ids) -> int:
        output = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
            pad_token_id=pad_token_id, eos_token_id=list(eos_token_ids), **lengths,
        )
        new_tokens = output[0, input_ids.shape[1]:].tolist()
        for position, token in enumerate(new_tokens):
            if token in eos_token_ids:
                return position + 1
        return len(new_tokens)

    generated, seconds = _timed(step, encoded, device, warmup, "CoT", progress)
    if cot_tokens and any(n != cot_tokens for n in generated):
        raise SirenError(f"forced CoT length not met: generated {generated} tokens, expected {cot_tokens} each")
    return Timing(seconds, generated)
