"""siren.decode_attention: the decode step's grouped-query attention gives sdpa's numbers without
repeating the KV cache, and generation with it writes the same tokens."""

import pytest
import torch

from siren import decode_attention


class _Layer:
    num_key_value_groups = 3
    is_causal = True


def _sdpa(*args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


@pytest.mark.parametrize("q_len", [1, 4])
@pytest.mark.parametrize("masked", [True, False])
def test_the_grouped_step_equals_sdpa(q_len, masked):
    torch.manual_seed(0)
    batch, kv_heads, length, head_dim = 2, 3, 9, 8
    query = torch.randn(batch, kv_heads * 3, q_len, head_dim)
    key, value = torch.randn(batch, kv_heads, length, head_dim), torch.randn(batch, kv_heads, length, head_dim)
    mask = None
    if masked:  # left padding: the first row's first 4 positions are padding
        mask = torch.ones(batch, 1, q_len, length, dtype=torch.bool)
        mask[0, ..., :4] = False
    expected, _ = _sdpa(_Layer(), query, key, value, mask, scaling=0.3, is_causal=False)
    got, _ = decode_attention.gqa_decode_attention(_Layer(), query, key, value, mask, scaling=0.3, is_causal=False)
    assert got.shape == expected.shape == (batch, q_len, kv_heads * 3, head_dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_it_does_not_copy_the_cache_for_one_token(monkeypatch):
    """One new token never goes through repeat_kv (the copy the module exists to avoid); a prompt does."""
    import transformers.integrations.sdpa_attention as sdpa_module

    calls = []
    real = sdpa_module.repeat_kv
    monkeypatch.setattr(sdpa_module, "repeat_kv", lambda states, n: calls.append(states.shape) or real(states, n))
    query, key = torch.randn(1, 6, 1, 4), torch.randn(1, 2, 5, 4)
    decode_attention.gqa_decode_attention(_Layer(), query, key, key, torch.ones(1, 1, 1, 5, dtype=torch.bool))
    assert calls == []
    decode_attention.gqa_decode_attention(_Layer(), torch.randn(1, 6, 5, 4), key, key,
                                          torch.ones(1, 1, 5, 5, dtype=torch.bool))
    assert len(calls) == 2  # keys and values of a masked prompt's forward, as sdpa does


@pytest.mark.slow
def test_generation_writes_the_same_tokens_as_sdpa(tiny_model_dir):
    """Left-padded batched greedy decoding on the tiny Qwen3 (16 query heads over 8 KV heads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    encoded = tokenizer(["a much longer prompt than the other one, " * 4, "short"], return_tensors="pt", padding=True,
                        add_special_tokens=False)
    assert not encoded["attention_mask"].all()  # padding is there, so sdpa gets a mask
    sequences = []
    for attention in ("sdpa", decode_attention.register()):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                     attn_implementation=attention).eval()
        assert model.config.num_attention_heads > model.config.num_key_value_heads
        with torch.no_grad():
            sequences.append(model.generate(**encoded, max_new_tokens=10, min_new_tokens=10, do_sample=False,
                                            pad_token_id=tokenizer.pad_token_id))
    assert torch.equal(sequences[0], sequences[1])

