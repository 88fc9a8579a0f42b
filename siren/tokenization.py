"""Tokenizer loading and token ids derived from the tokenizer (never hard-coded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from siren import SirenError

RATINGS = (1, 2, 3, 4, 5)


def load_tokenizer(path: str | os.PathLike, require_chat_template: bool = True, padding_side: str = "left"):
    """Load a Hugging Face tokenizer from a local directory, with clear errors."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise SirenError(f"model/tokenizer path does not exist: {path}")
    if path.is_dir() and not any((path / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise SirenError(f"{path} holds no tokenizer (no tokenizer.json or tokenizer_config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), padding_side=padding_side)
    except (OSError, ValueError) as err:
        raise SirenError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if require_chat_template and not getattr(tokenizer, "chat_template", None):
        raise SirenError(f"the tokenizer in {path} has no chat template; SIREN prompts need one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def save_tokenizer(tokenizer, folder: str | os.PathLike) -> None:
    """`tokenizer.save_pretrained(folder)`, with its added tokens listed in tokenizer_config.json.

    transformers 5 leaves `added_tokens_decoder` out when it saves a tokenizers-backed tokenizer,
    and every later load without it parses the whole tokenizer.json in Python to find them again:
    0.65 s more per load for Qwen3's 151k-token vocabulary (2.05 s against 1.40 s on the
    development box). The tokens are the same either way, and the list is not part of the
    tokenizer's identity (`siren.tokenizer_identity`)."""
    from siren.io import atomic_write_json

    tokenizer.save_pretrained(str(folder))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer saves its added tokens itself
        return
    config_path = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["added_tokens_decoder"] = {
        str(token_id): {"content": token.content, "lstrip": token.lstrip, "normalized": token.normalized,
                        "rstrip": token.rstrip, "single_word": token.single_word, "special": token.special}
        for token_id, token in sorted(backend.get_added_tokens_decoder().items())
    }
    atomic_write_json(config_path, config)


def single_token_id(tokenizer, text: str) -> int:
    """The id of `text` if it encodes to exactly one token (no special tokens added)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise SirenError(f"{text!r} is not a single token for this tokenizer (encodes to {ids})")
    return ids[0]


def rating_token_ids(tokenizer) -> dict[int, int]:
    """{rating: token id} for "1".."5"; an error naming the offenders if any is not one token."""
    bad = [str(r) for r in RATINGS if len(tokenizer.encode(str(r), add_special_tokens=False)) != 1]
    if bad:
        raise SirenError(f"rating strings {', '.join(bad)} are not single tokens for this tokenizer")
    return {r: single_token_id(tokenizer, str(r)) for r in RATINGS}


def count_tokens(tokenizer, texts: list[str], batch_size: int = 2048) -> list[int]:
    """Token counts of many texts, batched through the fast tokenizer."""
    counts: list[int] = []
    for start in range(0, len(texts), batch_size):
        encoded = tokenizer(texts[start:start + batch_size], add_special_tokens=False)["input_ids"]
        counts.extend(len(ids) for ids in encoded)
    return counts
