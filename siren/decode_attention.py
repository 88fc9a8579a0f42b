"""Grouped-query attention for the decode step, without copying the KV cache.

In a model with grouped-query attention (Qwen3: 32 query heads over 8 key/value heads; SmolLM2:
9 over 3) transformers' `sdpa` attention repeats every cached key and value once per query head
of its group whenever an attention mask is given, which batched generation with left padding
always gives. During decoding that copy is most of the step's memory traffic: at batch 32 and a
600-token context it moves the whole KV cache three (SmolLM2) or four (Qwen3) times per new token.

With one new token per row the copy is not needed. The `g` query heads that share a key/value head
become `g` query positions of that head: (batch, kv_heads, g, head_dim) against keys
(batch, kv_heads, length, head_dim), with the padding mask (batch, 1, 1, length) broadcast over
them. The arithmetic is the same; only the summation order inside the kernel may differ, so
greedy tokens can differ in bfloat16 where two logits tie to within its precision.

Everything else (the prompt's forward, training, output_attentions) goes to transformers' own
`sdpa`. Registered with transformers' `AttentionInterface` as `GQA_DECODE`; pass it as
`attn_implementation` when loading a model.
"""

from __future__ import annotations

GQA_DECODE = "siren_gqa_decode"


def gqa_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, **kwargs):
    """transformers' attention-function signature: query (batch, heads, q_len, head_dim), key and
    value (batch, kv_heads, length, head_dim); returns ((batch, q_len, heads, head_dim), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q_len, head_dim = query.shape
    mask_ok = attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1
                                         and attention_mask.shape[2] == 1)
    if groups == 1 or q_len != 1 or dropout or not mask_ok or kwargs.get("output_attentions"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    kv_heads = key.shape[1]
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(batch, kv_heads, groups, head_dim), key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, head_dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `GQA_DECODE` a valid `attn_implementation` in this process; returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GQA_DECODE, gqa_decode_attention)
    # The masks are sdpa's; an attention name without a mask function gets no mask at all (no padding).
    AttentionMaskInterface.register(GQA_DECODE, sdpa_mask)
    return GQA_DECODE
