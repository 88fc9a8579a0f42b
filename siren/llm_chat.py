"""Asking a chat LLM one question at a time: an OpenAI-compatible endpoint or a local model.

Stage 1's LLM topic namer (siren.topic_names) asks through these; each returns a function
`ask(messages) -> reply text`, and every failure to reach or load the model is one SirenError line.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from siren import SirenError


def openai_chat(base_url: str, model: str, api_key: str | None, timeout: float = 120.0) -> Callable[[list[dict]], str]:
    """A function sending chat messages to an OpenAI-compatible /chat/completions endpoint."""
    import urllib.error
    import urllib.request

    url = base_url.rstrip("/") + "/chat/completions"
    # Qwen3 served by `vllm serve` thinks by default: within max_tokens the reply would end inside
    # an unclosed <think>. vLLM and SGLang pass chat_template_kwargs to the chat template; an
    # endpoint that refuses the field (HTTP 400 naming it) is asked again without it.
    no_thinking = {"chat_template_kwargs": {"enable_thinking": False}}
    state = {"extra": no_thinking}

    def ask(messages: list[dict]) -> str:
        body = json.dumps({"model": model, "messages": messages, "temperature": 0.0, "max_tokens": 64,
                           **state["extra"]}).encode()
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace")
            if err.code == 400 and state["extra"] and "chat_template_kwargs" in detail:
                state["extra"] = {}
                return ask(messages)
            raise SirenError(f"LLM endpoint {url} answered HTTP {err.code}: {' '.join(detail.split())[:200]}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise SirenError(f"cannot reach LLM endpoint {url} ({getattr(err, 'reason', err)})") from None
        except json.JSONDecodeError:
            raise SirenError(f"LLM endpoint {url} did not return JSON") from None
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise SirenError(f"LLM endpoint {url} returned no choices[0].message.content") from None

    return ask


def local_hf_chat(model_path: str, device: str = "auto", max_new_tokens: int = 48) -> Callable[[list[dict]], str]:
    """A function answering chat messages with a local Hugging Face causal LM (greedy decoding)."""
    import torch
    from transformers import AutoModelForCausalLM

    from siren.embedding import resolve_device
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(model_path, require_chat_template=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise SirenError(f"cannot load --llm_local_model {model_path}: {str(err).splitlines()[0]}") from None
    model.to(resolve_device(device)).eval()

    def ask(messages: list[dict]) -> str:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return ask
