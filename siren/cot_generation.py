"""Stage 4a's chain-of-thought engines: batched generation of responses from chat prompts.

Two backends: Hugging Face `generate` (any device, used by the tests) and vLLM's offline
`LLM.generate` (GPU; imported only when asked for; the engine is built by
`siren.answer_only_engines.make_vllm_engine`, which the vllm answer-only engine shares). `load_generator` picks
one for --backend. Both take a batch of prompt texts and return (response text, generated tokens)
per prompt.

The Hugging Face backend can use transformers' static KV cache (`cache="static"`): a preallocated
cache whose decode step transformers compiles on a GPU, so a decode step replays instead of
launching every kernel from Python. Prompts are then left-padded to a multiple of
`STATIC_PAD_MULTIPLE` tokens, so that the compiled step meets a few shapes rather than one per
prompt length. The text generated is the same as with the dynamic cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from siren import SirenError

CACHES = ("dynamic", "static")
STATIC_PAD_MULTIPLE = 64


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float  # 0 means greedy
    top_p: float = 1.0

    def check(self) -> None:
        if self.max_new_tokens < 1:
            raise SirenError(f"--max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise SirenError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SirenError(f"--top_p must be in (0, 1], got {self.top_p}")


# ---------------------------------------------------------------------------------------------
# Backends


class HFGenerator:
    """Left-padded batched `generate`; greedy at temperature 0; dynamic or static KV cache."""

    def __init__(self, model, tokenizer, settings: SamplingSettings, cache: str = "dynamic") -> None:
        if cache not in CACHES:
            raise SirenError(f"unknown cache {cache!r}; expected one of {', '.join(CACHES)}")
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.cache = cache
        self.name = f"hf-{cache}-cache"
        self.dtype_name = str(model.dtype).removeprefix("torch.")
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        self.eos_ids = sorted(eos_ids)

    def generate(self, prompts: list[str], seed: int | None = None) -> list[tuple[str, int]]:
        """Responses to `prompts`; when sampling, `seed` seeds torch first, so a batch samples the
        same way whichever process runs it and whatever ran before."""
        import torch

        if seed is not None and self.settings.temperature > 0:
            torch.manual_seed(seed)
        static = self.cache == "static"
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False,
                                 pad_to_multiple_of=STATIC_PAD_MULTIPLE if static else None)
        encoded = {k: v.to(self.model.device) for k, v in encoded.items()}
        sampling = (
            {"do_sample": True, "temperature": self.settings.temperature, "top_p": self.settings.top_p}
            if self.settings.temperature > 0 else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        with torch.no_grad():
            output = self.model.generate(
                **encoded,
                max_new_tokens=self.settings.max_new_tokens,
                eos_token_id=self.eos_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                # A model fresh from a trainer with gradient checkpointing has config.use_cache
                # False; without the KV cache every new token recomputes the whole prompt.
                use_cache=True,
                **({"cache_implementation": "static"} if static else {}),
                **sampling,
            )
        new_tokens = output[:, encoded["input_ids"].shape[1]:].tolist()
        results = []
        for tokens in new_tokens:
            # The response ends at (and includes) the first end token; the rest is batch padding.
            length = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), len(tokens))
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True)
            results.append((text, length))
        return results


def check_backend(backend: str, cache: str = "dynamic") -> None:
    """Fail before any work if the chosen backend cannot run here."""
    import importlib.util

    if backend == "vllm" and cache != "dynamic":
        raise SirenError("--cache_implementation applies to --backend hf; vLLM manages its own (paged) KV cache")

    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise SirenError("--backend vllm needs the vllm package (pip install -r requirements.txt); use --backend hf")
    if backend not in ("hf", "vllm"):
        raise SirenError(f"unknown backend {backend!r}; expected hf or vllm")


class VLLMGenerator:
    """vLLM offline generation. Under several processes each one runs its own engine on its own
    GPU, joined to the launcher's process group as TRL's colocate mode does."""

    name = "vllm"

    def __init__(self, model_path: str | os.PathLike, dtype: str, settings: SamplingSettings,
                 num_processes: int, seed: int) -> None:
        from siren.answer_only_engines import make_vllm_engine

        self.llm = make_vllm_engine(model_path, dtype, num_processes, seed)
        self.dtype_name = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")
        from vllm import SamplingParams

        self.params = SamplingParams(
            temperature=settings.temperature, top_p=settings.top_p if settings.temperature > 0 else 1.0,
            max_tokens=settings.max_new_tokens, seed=seed,
        )

    def generate(self, prompts: list[str], seed: int | None = None) -> list[tuple[str, int]]:
        # SamplingParams(seed=...) seeds every request on its own: the batch does not matter.
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        return [(out.outputs[0].text, len(out.outputs[0].token_ids)) for out in outputs]


def load_generator(backend: str, model_path: str | os.PathLike, dtype: str, settings: SamplingSettings, state,
                   seed: int, tokenizer, cache: str = "dynamic"):
    """The engine for --backend on this process's device (`state`: accelerate's PartialState)."""
    check_backend(backend, cache)
    if backend == "vllm":
        return VLLMGenerator(model_path, dtype, settings, state.num_processes, seed)
    from siren import decode_attention
    from siren.modeling import load_causal_lm, resolve_dtype

    # Decoding attends without copying the KV cache per query head (siren.decode_attention).
    model = load_causal_lm(model_path, resolve_dtype(dtype, state.device.type), state.device,
                           attn_implementation=decode_attention.register())
    return HFGenerator(model, tokenizer, settings, cache)
