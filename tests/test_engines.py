"""siren.answer_only_engines: the answer-only engines agree with each other, and the compiled one keeps its shapes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from siren import SirenError
from siren.answer_only_engines import (
    CompiledAO,
    EagerAO,
    build_ao_engine,
    check_bucket_fallback,
    count_fallback_rows,
    left_padded,
    rating_probs_from_logprobs,
)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from siren.modeling import load_causal_lm
    from siren.tokenization import load_tokenizer, rating_token_ids

    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, torch.float32, "cpu")
    return model, tokenizer, rating_token_ids(tokenizer)


@pytest.fixture(scope="module")
def ao_prompts(tiny, verl_dir):
    from siren.answer_only_data import student_text
    from siren.verl_data import load_split_rows

    tokenizer = tiny[1]
    return [student_text(tokenizer, row) for row in load_split_rows(verl_dir, "test", limit=7)]


def test_left_padding_to_a_fixed_shape(tiny):
    tokenizer = tiny[1]
    ids, mask, positions = left_padded(tokenizer, ["a b c", "a"], width=6, rows=3)
    lengths = [len(tokenizer("a b c", add_special_tokens=False)["input_ids"]), 1]
    assert ids.shape == mask.shape == positions.shape == (3, 6)
    assert mask.sum(-1).tolist() == [lengths[0], 1, 1]  # the third row repeats the last prompt
    assert positions[1].tolist() == [0, 0, 0, 0, 0, 0] and positions[0, -1].item() == lengths[0] - 1
    assert torch.equal(ids[1], ids[2])
    with pytest.raises(ValueError, match="do not fit"):
        left_padded(tokenizer, ["a b c"], width=1)


def test_pack_lays_the_prompts_end_to_end():
    from siren.packed_attention import pack

    input_ids, position_ids, cu_seqlens, last = pack([[5, 6, 7], [8], [9, 10]])
    assert input_ids.tolist() == [[5, 6, 7, 8, 9, 10]]
    assert position_ids.tolist() == [[0, 1, 2, 0, 0, 1]]
    assert cu_seqlens.tolist() == [0, 3, 4, 6] and last.tolist() == [2, 3, 5]
    with pytest.raises(ValueError, match="no empty prompt"):
        pack([[5], []])


def test_packed_prompts_score_as_the_padded_batch_and_as_each_prompt_alone(tiny, ao_prompts):
    """Packing removes the padding, not the arithmetic: every prompt's rating distribution and
    greedy token equal the left-padded batch's and its own forward's, and no prompt sees another."""
    model, tokenizer, ratings = tiny
    packed_engine, padded_engine = EagerAO(model, tokenizer, ratings), EagerAO(model, tokenizer, ratings, packed=False)
    assert packed_engine.packed and packed_engine.report()["layout"] == "packed"
    assert padded_engine.report()["layout"] == "left-padded"
    lengths = [len(ids) for ids in tokenizer(ao_prompts, add_special_tokens=False)["input_ids"]]
    assert len(set(lengths)) > 1  # prompts of different lengths, so the padded batch has padding
    packed, padded = packed_engine.score(ao_prompts), padded_engine.score(ao_prompts)
    assert torch.allclose(packed.rating_probs, padded.rating_probs, atol=1e-5)
    assert torch.equal(packed.greedy_ids, padded.greedy_ids)
    alone = torch.cat([packed_engine.score([prompt]).rating_probs for prompt in ao_prompts[:2]])
    assert torch.allclose(packed.rating_probs[:2], alone, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"  # the model's own attention is back after each call


def test_packed_attention_refuses_what_it_cannot_do(tiny):
    from siren.packed_attention import packed_attention

    query = torch.zeros(1, 4, 6, 8)
    with pytest.raises(SirenError, match="needs one packed row and its cu_seq_lens_q"):
        packed_attention(None, query, query, query, None)
    with pytest.raises(SirenError, match="inference only"):
        packed_attention(None, query, query, query, None, dropout=0.1, cu_seq_lens_q=torch.tensor([0, 6]))
    with pytest.raises(SirenError, match=r"longer than this model's sliding window \(4 tokens\)"):
        packed_attention(None, query, query, query, None, cu_seq_lens_q=torch.tensor([0, 1, 6]), sliding_window=4)
    model, tokenizer, ratings = tiny
    no_backend = SimpleNamespace(_supports_attention_backend=False, device=torch.device("cpu"))
    assert not EagerAO(no_backend, tokenizer, ratings).packed
    with pytest.raises(SirenError, match="cannot be packed"):
        EagerAO(no_backend, tokenizer, ratings, packed=True)


@pytest.mark.slow
def test_compiled_engine_gives_the_eager_ratings(tiny, ao_prompts, one_thread):
    model, tokenizer, ratings = tiny
    eager = EagerAO(model, tokenizer, ratings).score(ao_prompts)
    lengths = [len(ids) for ids in tokenizer(ao_prompts, add_special_tokens=False)["input_ids"]]
    # Buckets between the prompt lengths, so that some rows fall back to eager and the rest use
    # two shapes; a static-shape capture without a code generator keeps the test fast on a CPU.
    cut = sorted(lengths)[len(lengths) // 2]
    engine = CompiledAO(model, tokenizer, ratings, batch_size=3, buckets=(cut, max(lengths) - 1), backend="aot_eager")
    warmup = engine.prepare(ao_prompts)
    assert warmup > 0 and engine.shapes == {(3, cut), (3, max(lengths) - 1)}
    compiled = engine.score(ao_prompts)
    assert engine.fallback_rows == sum(length > max(lengths) - 1 for length in lengths) >= 1
    engine.score(ao_prompts[-3:])  # a row scored again (a warm-up batch) is not a second fallback row
    assert engine.fallback_rows == sum(length > max(lengths) - 1 for length in lengths)
    assert engine.warmup_seconds == pytest.approx(warmup)  # no new shape while scoring
    assert torch.equal(compiled.rating_probs.argmax(-1), eager.rating_probs.argmax(-1))
    assert torch.allclose(compiled.rating_probs, eager.rating_probs, atol=1e-5)
    assert torch.equal(compiled.greedy_ids, eager.greedy_ids)
    assert engine.report()["compiled_shapes"] == sorted(engine.shapes)


@pytest.mark.slow
def test_compiled_engine_with_inductor_runs_on_cpu(tiny, ao_prompts, one_thread):
    """The default code generator (inductor) on a CPU: one bucket, one shape."""
    model, tokenizer, ratings = tiny
    engine = build_ao_engine("compiled", model, tokenizer, ratings, batch_size=2, buckets=(2048,))
    eager = EagerAO(model, tokenizer, ratings).score(ao_prompts[:2])
    engine.prepare(ao_prompts[:2])
    compiled = engine.score(ao_prompts[:2])
    assert engine.shapes == {(2, 2048)} and engine.fallback_rows == 0
    assert torch.equal(compiled.rating_probs.argmax(-1), eager.rating_probs.argmax(-1))
    assert torch.allclose(compiled.rating_probs, eager.rating_probs, atol=1e-4)


def test_vllm_logprobs_become_the_eager_rating_probabilities():
    logits = torch.tensor([[2.0, 0.5, -1.0, 3.0, 0.0]])
    processed = torch.log_softmax(logits, -1)[0]  # what processed_logprobs returns over the allowed tokens
    ids = [16, 17, 18, 19, 20]
    step = {token: SimpleNamespace(logprob=float(lp)) for token, lp in zip(ids, processed, strict=True)}
    step[7] = SimpleNamespace(logprob=-50.0)  # any other token vLLM may add is ignored
    probs = rating_probs_from_logprobs([step], ids)
    assert torch.allclose(probs, torch.softmax(logits, -1), atol=1e-6)
    del step[18]
    with pytest.raises(SirenError, match=r"no log-probability for rating token\(s\) \[18\] of row 0"):
        rating_probs_from_logprobs([step], ids)


def test_unknown_engine_and_bad_shapes_are_refused(tiny):
    model, tokenizer, ratings = tiny
    with pytest.raises(SirenError, match="unknown engine 'fast'"):
        build_ao_engine("fast", model, tokenizer, ratings)
    with pytest.raises(SirenError, match="batch size >= 1"):
        CompiledAO(model, tokenizer, ratings, batch_size=0)


def test_buckets_most_rows_do_not_fit_are_refused_and_some_are_a_note():
    """Issue 20: with buckets most rows exceed, the "compiled" latency would be the eager engine's:
    refused in one line. Some rows past the largest bucket (at most half) are counted, with a note."""
    lengths = [300, 280, 260, 250, 240, 120, 100, 90]
    assert count_fallback_rows(lengths, (16, 32)) == 8 and count_fallback_rows(lengths, (128, 512)) == 0
    with pytest.raises(SirenError) as err:
        check_bucket_fallback(lengths, (16, 32))
    assert str(err.value) == ("8 of 8 rows are longer than the largest --buckets value (32 tokens; the longest has "
                              "300) and would run eagerly, not compiled: add a bucket of at least 300, or use "
                              "--engine eager")
    with pytest.raises(SirenError, match="5 of 8 rows are longer"):
        check_bucket_fallback(lengths, (128, 200))  # most: 5 of 8
    assert check_bucket_fallback(lengths, (128, 245)) == (
        "note: 4 of 8 rows are longer than the largest bucket (245 tokens) and run eagerly; the compiled latency "
        "includes them (engine.fallback_rows)")  # half is not most
    assert check_bucket_fallback(lengths, (512,)) is None
