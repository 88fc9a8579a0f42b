"""What identifies a model folder's tokenizer, from its files alone (nothing is loaded): digests of
its vocabulary, its special tokens and its chat template (`tokenizer_files_record`), which the
stages record in their manifests and compare; and the list of tokenizer files a stage copies into
a model folder it writes (`copy_tokenizer_files`). `siren.modeling.model_record` holds the record
beside the weights and config digests.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_sha256_or_none(path: Path) -> str | None:
    """SHA-256 of a file's bytes; None when there is no file."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


# A tokenizer's identity is what decides the tokens of a text and the text of a chat: the
# vocabulary and merges, the normalizer, pre-tokenizer, post-processor and decoder, the added
# tokens, the special tokens and whether they are added, and the chat template. Everything else
# in the files says how the tokenizer was loaded or will pad and truncate, and changes when a
# stage saves it again: transformers 5.9 adds padding_side, is_local and local_files_only to
# tokenizer_config.json, and a trainer's save can add max_length, pad_to_multiple_of and
# pad_token_type_id. The pad token is left out too: padding never changes a real token, and
# `siren.tokenization.load_tokenizer` sets a missing pad to eos, which a later save records.
_TOKENIZER_JSON_KEYS = ("model", "added_tokens", "normalizer", "pre_tokenizer", "post_processor", "decoder")
_TOKENIZER_CONFIG_KEYS = frozenset({
    "bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token", "additional_special_tokens",
    "extra_special_tokens", "add_bos_token", "add_eos_token", "add_prefix_space", "do_lower_case",
})
# Files of tokenizers without a tokenizer.json (slow tokenizers): their bytes are the vocabulary.
_VOCAB_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "qwen.tiktoken")


def json_digest(obj) -> str:
    """SHA-256 of a JSON value, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def read_json_object(path: Path) -> dict | None:
    """A JSON file's object; None when the file is missing, unreadable or not a JSON object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _vocabulary_sha256(folder: Path) -> str | None:
    """SHA-256 of what turns text into ids: tokenizer.json's model, pipeline and added tokens, or
    the vocabulary files of a tokenizer without one."""
    backend = _tokenizer_json_digest(folder / "tokenizer.json")
    if backend is not None:
        return backend
    files = {name: file_sha256_or_none(folder / name) for name in _VOCAB_FILES if (folder / name).is_file()}
    return json_digest(files) if files else None


# Parsing and re-serialising an 11 MB tokenizer.json (Qwen3's) takes about a CPU-second, and every
# stage process digests its model's. The result is kept per file content: in this process, and as a
# one-line file named after the sha256 of the file's bytes (hashing the bytes takes 20 ms) under
# $XDG_CACHE_HOME/siren/vocabulary_sha256 (else ~/.cache). Equal bytes, equal digest, so a cached
# line can never stand for another file; a cache that cannot be written is skipped.
_VOCABULARY_DIGESTS: dict[str, str | None] = {}
_VOCABULARY_CACHE_DIR = ("siren", "vocabulary_sha256")


def _vocabulary_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").joinpath(*_VOCABULARY_CACHE_DIR)


def _tokenizer_json_digest(path: Path) -> str | None:
    """The digest of tokenizer.json's `_TOKENIZER_JSON_KEYS`, or None when the file is missing or
    not a JSON object."""
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    key = hashlib.sha256(raw).hexdigest()
    if key in _VOCABULARY_DIGESTS:
        return _VOCABULARY_DIGESTS[key]
    cached = _vocabulary_cache_dir() / key
    try:
        value = cached.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        value = ""
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        try:
            backend = json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            backend = None
        if not isinstance(backend, dict):
            _VOCABULARY_DIGESTS[key] = None
            return None
        value = json_digest({name: backend.get(name) for name in _TOKENIZER_JSON_KEYS})
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            temporary = cached.with_name(f".{key}.{os.getpid()}.tmp")
            temporary.write_text(value + "\n", encoding="ascii")
            os.replace(temporary, cached)
        except OSError:
            pass
    _VOCABULARY_DIGESTS[key] = value
    return value


def _special_tokens_sha256(folder: Path) -> str | None:
    config = read_json_object(folder / "tokenizer_config.json")
    if config is None:
        return file_sha256_or_none(folder / "tokenizer_config.json")
    return json_digest({key: config[key] for key in sorted(_TOKENIZER_CONFIG_KEYS & set(config))})


def _chat_template_sha256(folder: Path) -> str | None:
    """The template a chat is rendered with: chat_template.jinja, else tokenizer_config.json's key."""
    if (folder / "chat_template.jinja").is_file():
        return file_sha256_or_none(folder / "chat_template.jinja")
    template = (read_json_object(folder / "tokenizer_config.json") or {}).get("chat_template")
    if isinstance(template, str):
        return hashlib.sha256(template.encode("utf-8")).hexdigest()
    return None if template is None else json_digest(template)


def tokenizer_files_record(model_path: str | os.PathLike) -> dict:
    """What identifies a folder's tokenizer, from its files (no tokenizer is loaded): digests of its
    vocabulary, its special tokens and its chat template (see `_TOKENIZER_JSON_KEYS`). A tokenizer
    saved again by a later stage keeps its record; one that would tokenize or render otherwise
    does not."""
    folder = Path(model_path)
    return {
        "vocabulary_sha256": _vocabulary_sha256(folder),
        "special_tokens_sha256": _special_tokens_sha256(folder),
        "chat_template_sha256": _chat_template_sha256(folder),
    }


# The files that make up a Hugging Face tokenizer, copied verbatim where a stage writes a model
# folder (stage 5's merged/), so the copy has exactly the tokenizer of the original.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json", "qwen.tiktoken",
)


def copy_tokenizer_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy the tokenizer files of model folder `source` into `target`; returns the names copied."""
    import shutil

    copied = []
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(target) / name)
            copied.append(name)
    return copied
