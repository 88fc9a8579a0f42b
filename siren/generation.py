"""Stage 4a's chain-of-thought engines: batched generation of responses from chat prompts.

Two backends: Hugging Face `generate` (any device, used by the tests) and vLLM's offline
`LLM.generate` (GPU; imported only when asked for). `load_generator` picks one for --backend.
Both take a batch of prompt texts and return (response text, generated tokens) per prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from siren import SirenError


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
    """Left-padded batched `generate`; greedy at temperature 0."""

    def __init__(self, model, tokenizer, settings: SamplingSettings) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
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
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
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


def check_backend(backend: str) -> None:
    """Fail before any work if the chosen backend cannot run here."""
    import importlib.util

    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise SirenError("--backend vllm needs the vllm package (pip install -r requirements.txt); use --backend hf")
    if backend not in ("hf", "vllm"):
        raise SirenError(f"unknown backend {backend!r}; expected hf or vllm")


class VLLMGenerator:
    """vLLM offline generation. Under several processes each one runs its own engine on its own
    GPU, joined to the launcher's process group as TRL's colocate mode does."""

    def __init__(self, model_path: str | os.PathLike, dtype: str, settings: SamplingSettings,
                 num_processes: int, seed: int) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError:
            raise SirenError("--backend vllm needs the vllm package (pip install -r requirements.txt)") from None
        engine_args = {"distributed_executor_backend": "external_launcher"} if num_processes > 1 else {}
        self.llm = LLM(model=str(model_path), dtype="auto" if dtype == "auto" else dtype,
                       tensor_parallel_size=1, seed=seed, **engine_args)
        self.params = SamplingParams(
            temperature=settings.temperature, top_p=settings.top_p if settings.temperature > 0 else 1.0,
            max_tokens=settings.max_new_tokens, seed=seed,
        )

    def generate(self, prompts: list[str], seed: int | None = None) -> list[tuple[str, int]]:
        # SamplingParams(seed=...) seeds every request on its own: the batch does not matter.
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        return [(out.outputs[0].text, len(out.outputs[0].token_ids)) for out in outputs]


def load_generator(backend: str, model_path: str | os.PathLike, dtype: str, settings: SamplingSettings, state,
                   seed: int, tokenizer):
    """The engine for --backend on this process's device (`state`: accelerate's PartialState)."""
    check_backend(backend)
    if backend == "vllm":
        return VLLMGenerator(model_path, dtype, settings, state.num_processes, seed)
    from siren.modeling import load_causal_lm, resolve_dtype

    model = load_causal_lm(model_path, resolve_dtype(dtype, state.device.type), state.device)
    return HFGenerator(model, tokenizer, settings)
