"""Counting prompt tokens exactly and fast: stage 2's token report and the TRL backend's length filter.

`PromptTokenCounter` counts chat-templated prompts (system + user, generation prompt added) as the
model sees them; `token_summary` gives the {"n", "mean", "p50", "p95", "max"} of prompt_stats.json.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from siren import SirenError
from siren.prompts import chat_prompt_text
from siren.tokenization import count_tokens


def load_counting_tokenizer(path: str | os.PathLike):
    """A tokenizer for counting prompt tokens, loaded the quick way when the folder has tokenizer.json.

    AutoTokenizer imports transformers' model registry (about 10 s on 2 cores); the fast-tokenizer
    class reads the same tokenizer.json and chat template, so the counts are the same.
    """
    from siren.tokenization import load_tokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        return load_tokenizer(path)
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise SirenError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise SirenError(f"the tokenizer in {path} has no chat template; SIREN prompts need one")
    return tokenizer


class PromptTokenCounter:
    """Exact token counts of chat-templated prompts (system + user, generation prompt added), fast.

    Tokenizing 4 variants of 27k prompts whole (Movies train raw-history prompts average ~1,000
    tokens) takes about a minute on 2 cores, but
    the prompts are built from a few tens of thousands of distinct lines, and those from far fewer
    distinct titles and category strings. Added tokens (`<|im_start|>` ...) split the text before
    pre-tokenization, and a byte-level BPE pre-token (Qwen, GPT-style regex) neither continues past a
    run of newlines nor runs from a comma into the space after it. So a prompt's count is the sum
    of the counts of its "line + trailing newlines" chunks, and a chunk's count the sum over its
    pieces split after ", "; each piece is tokenized once and cached. `verify` checks that claim
    against whole-text tokenization; if it fails for a tokenizer, every prompt is tokenized whole.
    """

    _CHUNK = re.compile(r"[^\n]*\n+|[^\n]+")
    _PIECE_BOUNDARY = re.compile(r"(?<=,)(?= )")
    _SENTINEL = "\x00SIREN-USER\x00"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.chunk_counts: dict[str, int] = {}
        self.piece_counts: dict[str, int] = {}
        self.whole_text = False  # set when chunked counting disagreed with the tokenizer
        self._frames: dict[str, tuple[str, str] | None] = {}

    def _frame(self, system: str) -> tuple[str, str] | None:
        """The templated text around the user message, for a given system message (rendered once)."""
        if system not in self._frames:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": self._SENTINEL}]
            rendered = chat_prompt_text(self.tokenizer, messages)
            head, sep, tail = rendered.partition(self._SENTINEL)
            self._frames[system] = (head, tail) if sep and self._SENTINEL not in tail else None
        return self._frames[system]

    def render(self, messages: list[dict]) -> str:
        if len(messages) == 2 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
            frame = self._frame(messages[0]["content"])
            if frame is not None:
                return frame[0] + messages[1]["content"] + frame[1]
        return chat_prompt_text(self.tokenizer, messages)

    def _count_whole(self, texts: list[str]) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # Same ids as tokenizer(texts, add_special_tokens=False) without building offsets and masks.
            return [len(encoding.ids) for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return count_tokens(self.tokenizer, texts)

    def count_texts(self, texts: list[str]) -> np.ndarray:
        if self.whole_text:
            return np.asarray(self._count_whole(texts), dtype=np.int64)
        chunked = [self._CHUNK.findall(text) for text in texts]
        new_chunks = list({chunk for chunks in chunked for chunk in chunks if chunk not in self.chunk_counts})
        pieces_of = [self._PIECE_BOUNDARY.split(chunk) for chunk in new_chunks]
        new_pieces = list({piece for pieces in pieces_of for piece in pieces if piece not in self.piece_counts})
        self.piece_counts.update(zip(new_pieces, self._count_whole(new_pieces), strict=True))
        piece_counts = self.piece_counts
        self.chunk_counts.update(
            (chunk, sum(piece_counts[p] for p in pieces)) for chunk, pieces in zip(new_chunks, pieces_of, strict=True)
        )
        lookup = self.chunk_counts
        return np.fromiter((sum(lookup[c] for c in chunks) for chunks in chunked), dtype=np.int64, count=len(texts))

    def count(self, prompts: list[list[dict]]) -> np.ndarray:
        return self.count_texts([self.render(messages) for messages in prompts])

    def verify(self, prompts: list[list[dict]], sample_size: int = 24) -> bool:
        """Compare fast counts with whole-text tokenization of chat_prompt_text on a spread sample.

        On disagreement switch to whole-text counting for good and return False.
        """
        if self.whole_text or not prompts:
            return not self.whole_text
        picks = sorted(set(np.linspace(0, len(prompts) - 1, num=min(sample_size, len(prompts))).astype(int).tolist()))
        exact_texts = [chat_prompt_text(self.tokenizer, prompts[i]) for i in picks]
        exact = count_tokens(self.tokenizer, exact_texts)
        fast = self.count([prompts[i] for i in picks]).tolist()
        if exact != fast:
            self.whole_text = True
        return not self.whole_text


def token_summary(counts: np.ndarray) -> dict:
    """{"n", "mean", "p50", "p95", "max"} of a token-count array (as in prompt_stats.json)."""
    if len(counts) == 0:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "max": None}
    return {
        "n": int(len(counts)),
        "mean": round(float(np.mean(counts)), 2),
        "p50": round(float(np.percentile(counts, 50)), 2),
        "p95": round(float(np.percentile(counts, 95)), 2),
        "max": int(np.max(counts)),
    }
