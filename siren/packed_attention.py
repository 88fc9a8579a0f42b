"""Answer-only prefill without padding: a batch's prompts packed into one row.

Stage 6 needs one thing per prompt: the logits of its last token. Left-padding a batch to its
longest prompt makes every linear layer, norm and activation run over the pad tokens too, and the
padding mask forces the attention kernel to compute the whole square of scores. Packing the
prompts end to end into a single row of exactly their real tokens removes both:

  input_ids     [1, N]   the prompts' tokens, one after another (N = the sum of their lengths)
  position_ids  [1, N]   0..len-1 within each prompt (rotary positions as if it were alone)
  cu_seqlens    [B + 1]  where each prompt starts and ends in the row (0, len1, len1 + len2, ...)
  last          [B]      the position of each prompt's last token: the logits to keep

The attention (`packed_attention`, registered with transformers' `AttentionInterface` as
`PACKED`) runs causal scaled-dot-product attention on each prompt's own slice of the row, so no
prompt sees another one. Everything else in the decoder is per token. A prompt's logits are
therefore its logits alone, equal to the padded forward's up to float rounding
(`tests/test_engines.py`).

Only models whose attention goes through transformers' `AttentionInterface` (Llama, Qwen3 and
most current decoders: `_supports_attention_backend`) can be packed; `supports_packing` says which.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from siren import SirenError

PACKED = "siren_packed"


def packed_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, cu_seq_lens_q=None, **kwargs):
    """transformers' attention-function signature: query (1, heads, N, head_dim), key and value
    (1, kv_heads, N, head_dim) of a packed row; `cu_seq_lens_q` (B + 1 offsets) cuts it into
    prompts. Returns ((1, N, heads, head_dim), None)."""
    import torch

    if cu_seq_lens_q is None or query.shape[0] != 1:
        raise SirenError("the packed attention needs one packed row and its cu_seq_lens_q (siren.packed_attention.pack)")
    if dropout or kwargs.get("output_attentions") or kwargs.get("softcap") is not None:
        raise SirenError("the packed attention is for inference only: no dropout, softcap or attention weights")
    bounds = cu_seq_lens_q.tolist()
    window = kwargs.get("sliding_window")
    if window is not None and max(e - s for s, e in zip(bounds[:-1], bounds[1:], strict=True)) > window:
        raise SirenError(f"a prompt is longer than this model's sliding window ({window} tokens); "
                         "the packed attention does not apply one")
    grouped = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        out[:, :, start:end] = torch.nn.functional.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], is_causal=True, scale=scaling,
            enable_gqa=grouped)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `PACKED` a valid attention implementation in this process; returns the name. It has
    no mask function on purpose: transformers then builds no mask, and the slices are the mask."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED, packed_attention)
    return PACKED


def supports_packing(model) -> bool:
    """Whether `model`'s attention is dispatched through transformers' AttentionInterface."""
    return bool(getattr(model, "_supports_attention_backend", False))


def pack(token_ids: Sequence[Sequence[int]]):
    """(input_ids [1, N], position_ids [1, N], cu_seqlens [B + 1], last [B]) of these prompts."""
    import torch

    if not token_ids or any(len(ids) == 0 for ids in token_ids):
        raise ValueError("pack needs at least one prompt and no empty prompt")
    lengths = torch.tensor([len(ids) for ids in token_ids], dtype=torch.long)
    input_ids = torch.tensor([t for ids in token_ids for t in ids], dtype=torch.long)[None]
    position_ids = torch.cat([torch.arange(n) for n in lengths.tolist()])[None]
    cu_seqlens = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return input_ids, position_ids, cu_seqlens, cu_seqlens[1:] - 1


@contextmanager
def packed(model) -> Iterator[None]:
    """Run `model` with the packed attention inside the block and its own attention after it."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(register())
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def last_token_logits(model, token_ids: Sequence[Sequence[int]]):
    """[B, vocab] logits of each prompt's last token, from one forward over the packed prompts."""
    input_ids, position_ids, cu_seqlens, last = pack(token_ids)
    device = model.device
    with packed(model):
        output = model(input_ids=input_ids.to(device), position_ids=position_ids.to(device), use_cache=False,
                       logits_to_keep=last.to(device), cu_seq_lens_q=cu_seqlens.to(device))
    return output.logits[0]
