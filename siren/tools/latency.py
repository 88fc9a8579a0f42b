"""Latency of answer-only (AO) against chain-of-thought (CoT) decoding on the same model and prompts.

AO is what stage 6 does: one forward pass over prompt + empty think + `<answer>`, then the most
likely of the rating tokens (one generated token), through one of `siren.answer_only_engines` (eager,
compiled, vllm) at a given batch size. CoT is greedy generation from the chat prompt, one sample at
a time (the paper's per-sample figure), with Hugging Face's dynamic KV cache or its static cache
(whose decode step transformers compiles on a GPU), optionally forced to a fixed length so the
ratio matches the paper's ~238-token reasoning.

Every timed row says how it was measured (decoding, engine, batch size, device, dtype); warm-up
(compilation, CUDA-graph capture, the first calls) is run first, reported apart and never inside
the timed figures. CUDA work is synchronised before the timer stops.
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

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


COT_CACHES = ("dynamic", "static")


@dataclass
class Timing:
    """Seconds and generated tokens of each timed sample, in prompt order, and how they were measured."""

    seconds: list[float]
    generated_tokens: list[int]
    decoding: str = "ao"          # "ao" or "cot"
    engine: str = "eager"         # AO: siren.answer_only_engines name; CoT: "hf-dynamic-cache" / "hf-static-cache"
    batch_size: int = 1
    warmup_seconds: float = 0.0
    fallback_rows: int = 0        # compiled AO: rows longer than the largest bucket (run eagerly)

    def summary(self, device: str, dtype: str | None = None) -> dict:
        """The latency dict stages 4a and 6 write (ms/sample, samples/s, generated tokens/sample,
        device, n) plus how the row was measured and, for CoT, ms per generated token."""
        from siren.metrics import latency_summary

        return {"decoding": self.decoding, **latency_summary(
            self.seconds, self.generated_tokens, device, engine=self.engine, batch_size=self.batch_size, dtype=dtype,
            warmup_seconds=round(self.warmup_seconds, 3), fallback_rows=self.fallback_rows)}


def time_answer_only(engine, prompts: list[str], device: str, *, batch_size: int = 1, warmup: int = 2,
                     progress: bool = False) -> tuple[Timing, list[int]]:
    """Score `prompts` with an AO engine in batches of `batch_size`, timing each batch.

    Warm-up: the engine's `prepare` (the compiled engine compiles every shape the prompts need)
    and then the first `warmup` batches, untimed. A batch's time is shared by its rows. Returns the
    timing and, per prompt, the index (0-4) of the chosen rating.
    """
    import torch
    from tqdm.auto import tqdm

    batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
    start = time.perf_counter()
    engine.prepare(prompts)
    with torch.inference_mode():
        for batch in batches[:warmup]:
            engine.score(batch)
        _synchronize(device)
        warmup_seconds = time.perf_counter() - start
        choices, seconds = [], []
        for batch in tqdm(batches, desc=f"answer-only ({engine.name}, batch {batch_size})", disable=not progress):
            _synchronize(device)
            batch_start = time.perf_counter()
            scores = engine.score(batch)
            _synchronize(device)
            elapsed = time.perf_counter() - batch_start
            seconds += [elapsed / len(batch)] * len(batch)
            choices += scores.rating_probs.argmax(-1).tolist()
    # prepare() counted the prompts that run eagerly, each once (the warm-up batches are not counted again).
    timing = Timing(seconds, [1] * len(prompts), "ao", engine.name, batch_size, warmup_seconds,
                    getattr(engine, "fallback_rows", 0))
    return timing, choices


def cot_generate_kwargs(cache: str) -> dict:
    """generate() arguments of a CoT cache setting: "dynamic" (the default cache) or "static"
    (a preallocated cache; on CUDA transformers compiles the decode step for it)."""
    if cache not in COT_CACHES:
        raise SirenError(f"unknown cache {cache!r}; expected one of {', '.join(COT_CACHES)}")
    return {"cache_implementation": "static"} if cache == "static" else {}


def time_cot(model, tokenizer, prompts: list[str], device: str, *, cot_tokens: int | None, max_new_tokens: int,
             eos_token_ids: list[int], cache: str = "dynamic", pad_to_multiple_of: int | None = None,
             warmup: int = 2, progress: bool = False) -> Timing:
    """Greedy generation per CoT prompt, one at a time; `cot_tokens` forces exactly that many new
    tokens (EOS blocked). With `pad_to_multiple_of`, prompts are left-padded to a multiple of it, so
    a static cache meets a few prompt shapes; one untimed generation per shape (and `warmup` more
    prompts) is the warm-up, so compilation never lands in the timed figures."""
    import torch
    from tqdm.auto import tqdm

    if cot_tokens:
        # min == max with EOS suppressed: every sample generates exactly cot_tokens tokens.
        lengths = dict(min_new_tokens=cot_tokens, max_new_tokens=cot_tokens, suppress_tokens=list(eos_token_ids))
    else:
        lengths = dict(max_new_tokens=max_new_tokens)
    extra = cot_generate_kwargs(cache)

    def encode(text: str):
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False, padding=bool(pad_to_multiple_of),
                            pad_to_multiple_of=pad_to_multiple_of, padding_side="left")
        return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)

    def step(encoded) -> int:
        input_ids, attention_mask = encoded
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=list(eos_token_ids), **lengths, **extra)
        new_tokens = output[0, input_ids.shape[1]:].tolist()
        return next((i + 1 for i, token in enumerate(new_tokens) if token in eos_token_ids), len(new_tokens))

    inputs = [encode(p) for p in prompts]
    first_of_shape = {}
    for i, (input_ids, _) in enumerate(inputs):
        first_of_shape.setdefault(input_ids.shape[1], i)
    warm = sorted(set(range(min(warmup, len(inputs)))) | (set(first_of_shape.values()) if cache == "static" else set()))
    generated, seconds = [], []
    with torch.inference_mode():
        start = time.perf_counter()
        for i in warm:
            step(inputs[i])
        _synchronize(device)
        warmup_seconds = time.perf_counter() - start
        for encoded in tqdm(inputs, desc=f"CoT ({cache} cache)", disable=not progress):
            _synchronize(device)
            sample_start = time.perf_counter()
            generated.append(step(encoded))
            _synchronize(device)
            seconds.append(time.perf_counter() - sample_start)
    if cot_tokens and any(n != cot_tokens for n in generated):
        raise SirenError(f"forced CoT length not met: generated {generated} tokens, expected {cot_tokens} each")
    return Timing(seconds, generated, "cot", f"hf-{cache}-cache", 1, warmup_seconds)


def like_for_like_speedups(rows: list[dict]) -> list[dict]:
    """CoT ms/sample over AO ms/sample for every pair of rows measured the same way: same batch
    size, device and dtype. Rows that differ in any of those are never compared."""
    speedups = []
    for cot in (r for r in rows if r["decoding"] == "cot"):
        for ao in (r for r in rows if r["decoding"] == "ao"):
            same = all(cot[key] == ao[key] for key in ("batch_size", "device", "dtype"))
            if same and cot["ms_per_sample"] and ao["ms_per_sample"]:
                speedups.append({"cot_engine": cot["engine"], "ao_engine": ao["engine"], "batch_size": cot["batch_size"],
                                 "device": cot["device"], "dtype": cot["dtype"],
                                 "speedup": cot["ms_per_sample"] / ao["ms_per_sample"]})
    return speedups
