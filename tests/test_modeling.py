"""siren.modeling: model identity records (what later stages compare) and the rating-token maths."""

from __future__ import annotations

import json
import shutil

import pytest

from siren import SirenError
from siren.modeling import check_same_model, model_record, weights_digest


def _fake_model(folder, payload: bytes, hidden_size: int = 8):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "hidden_size": hidden_size}))
    (folder / "model.safetensors").write_bytes(payload)
    (folder / "tokenizer.json").write_text('{"model": "bpe"}')
    return folder


def test_weights_digest_sees_a_change_anywhere_and_nothing_else(tmp_path):
    payload = bytes(range(256)) * 40_000  # ~10 MB: samples are spread, not the whole file
    first = _fake_model(tmp_path / "a", payload)
    copy = shutil.copytree(first, tmp_path / "b")
    assert weights_digest(first) == weights_digest(copy)
    changed = bytearray(payload)
    changed[len(payload) // 2: len(payload) // 2 + 8192] = b"\x01" * 8192  # one tensor in the middle
    (copy / "model.safetensors").write_bytes(bytes(changed))
    assert weights_digest(first) != weights_digest(copy)
    assert weights_digest(tmp_path) is None  # a folder without weight files


def test_check_same_model_names_what_differs(tmp_path):
    base = model_record(_fake_model(tmp_path / "base", b"\x00" * 5000))
    check_same_model(base, model_record(tmp_path / "base"), what="x")  # the same folder passes
    other = model_record(_fake_model(tmp_path / "other", b"\x07" * 5000))
    with pytest.raises(SirenError, match=r"states were made with .*base, not .*other \(weights_digest differs\)"):
        check_same_model(base, other, what="states were made with")
    wider = model_record(_fake_model(tmp_path / "wider", b"\x00" * 5000, hidden_size=16))
    with pytest.raises(SirenError, match=r"architecture\.hidden_size: 8 there, 16 here"):
        check_same_model(base, wider, what="made with")
    check_same_model(None, other, what="no upstream manifest: nothing to compare")
    check_same_model({"path": "old", "architecture": None}, other, what="an older record without the parts")
    same_weights_other_tokenizer = model_record(_fake_model(tmp_path / "tok", b"\x00" * 5000))
    (tmp_path / "tok" / "tokenizer.json").write_text('{"model": "other"}')
    with pytest.raises(SirenError, match=r"tokenizer\.vocabulary_sha256"):
        check_same_model(base, model_record(tmp_path / "tok"), what="tokenized with", parts=("tokenizer",))
    assert same_weights_other_tokenizer["weights_digest"] == base["weights_digest"]


def test_a_tokenizer_saved_again_keeps_its_identity(tiny_model_dir, tmp_path):
    """save_pretrained adds load-time keys (padding_side, is_local, ...) to tokenizer_config.json;
    they do not change how text is split or a chat rendered, so the record ignores them."""
    from siren.tokenization import load_tokenizer
    from siren.tokenizer_identity import copy_tokenizer_files, tokenizer_files_record

    load_tokenizer(tiny_model_dir, padding_side="right").save_pretrained(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "tokenizer_config.json").read_bytes() != (tiny_model_dir / "tokenizer_config.json").read_bytes()
    assert tokenizer_files_record(tmp_path / "saved") == tokenizer_files_record(tiny_model_dir)
    (tmp_path / "copied").mkdir()
    assert "tokenizer.json" in copy_tokenizer_files(tiny_model_dir, tmp_path / "copied")
    assert tokenizer_files_record(tmp_path / "copied") == tokenizer_files_record(tiny_model_dir)
    config = json.loads((tiny_model_dir / "tokenizer_config.json").read_text())
    config["eos_token"] = "<|endoftext|>" if config.get("eos_token") != "<|endoftext|>" else "<|im_end|>"
    (tmp_path / "copied" / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer_files_record(tmp_path / "copied") != tokenizer_files_record(tiny_model_dir)


def test_tokenizer_identity_rests_on_tokens_and_template_only(tiny_model_dir, tmp_path):
    """A trainer's save adds padding/truncation settings and a pad token (the GRPO stage's save made
    stage 6 refuse 4c data built with the untouched model); none of it changes a token. The
    vocabulary, an added token and the template do."""
    import shutil

    from siren.tokenizer_identity import tokenizer_files_record

    base = tokenizer_files_record(tiny_model_dir)
    folder = tmp_path / "saved"
    shutil.copytree(tiny_model_dir, folder)
    backend = json.loads((folder / "tokenizer.json").read_text())
    backend["padding"] = {"strategy": "BatchLongest", "pad_to_multiple_of": 8, "pad_type_id": 0, "pad_id": 1}
    backend["truncation"] = {"max_length": 2048, "strategy": "LongestFirst", "stride": 0}
    (folder / "tokenizer.json").write_text(json.dumps(backend))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(max_length=2048, pad_to_multiple_of=None, pad_token_type_id=0, pad_token="<|im_end|>",
                  padding_side="left", model_max_length=123)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert tokenizer_files_record(folder) == base

    backend["added_tokens"] = [*backend["added_tokens"], {**backend["added_tokens"][-1], "id": 10**6, "content": "<x>"}]
    (folder / "tokenizer.json").write_text(json.dumps(backend))
    assert tokenizer_files_record(folder)["vocabulary_sha256"] != base["vocabulary_sha256"]
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    assert tokenizer_files_record(folder)["chat_template_sha256"] != base["chat_template_sha256"]


def test_the_vocabulary_digest_is_cached_per_file_content(tmp_path, monkeypatch):
    """The digest of tokenizer.json is kept under $XDG_CACHE_HOME/siren, named after the sha256 of
    the file's bytes: the same digest from the cache as from parsing; a damaged cache line is
    recomputed and rewritten; other bytes, other digest; an unwritable cache is skipped. (A small
    tokenizer.json of the same layout: the cache does not depend on the vocabulary's size, and
    parsing Qwen3's 11 MB file five times took 8 s.)"""
    import hashlib

    import siren.tokenizer_identity as identity

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(identity, "_VOCABULARY_DIGESTS", {})
    model = tmp_path / "model"
    model.mkdir()
    backend = {"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]]},
               "added_tokens": [{"id": 3, "content": "<|im_end|>", "special": True},
                                {"id": 4, "content": "<think>", "special": False}],
               "normalizer": None, "pre_tokenizer": {"type": "ByteLevel"}, "post_processor": None, "decoder": None}
    (model / "tokenizer.json").write_text(json.dumps(backend))
    raw = (model / "tokenizer.json").read_bytes()
    expected = identity.json_digest({key: backend.get(key) for key in identity._TOKENIZER_JSON_KEYS})
    line = tmp_path / "cache" / "siren" / "vocabulary_sha256" / hashlib.sha256(raw).hexdigest()

    assert identity._vocabulary_sha256(model) == expected
    assert line.read_text() == expected + "\n"
    monkeypatch.setattr(identity, "_VOCABULARY_DIGESTS", {})
    line.write_text("f" * 64 + "\n")  # a cached line is trusted: this proves it is read
    assert identity._vocabulary_sha256(model) == "f" * 64
    monkeypatch.setattr(identity, "_VOCABULARY_DIGESTS", {})
    line.write_text("not a digest")
    assert identity._vocabulary_sha256(model) == expected
    assert line.read_text() == expected + "\n"

    folder = tmp_path / "edited"
    folder.mkdir()
    backend["added_tokens"] = backend["added_tokens"][:-1]
    (folder / "tokenizer.json").write_text(json.dumps(backend))
    assert identity._vocabulary_sha256(folder) not in (None, expected)

    monkeypatch.setattr(identity, "_VOCABULARY_DIGESTS", {})
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a cache that cannot be made
    assert identity._vocabulary_sha256(model) == expected
    (folder / "tokenizer.json").write_text("[]")  # not an object: the vocabulary files decide
    assert identity._vocabulary_sha256(folder) is None


def test_an_older_tokenizer_record_is_compared_on_the_parts_both_hold(tiny_model_dir):
    from siren.modeling import check_same_model, model_record

    actual = model_record(tiny_model_dir)
    older = {**actual, "tokenizer": {"tokenizer_json_sha256": "0" * 64,
                                     "chat_template_sha256": actual["tokenizer"]["chat_template_sha256"]}}
    check_same_model(older, actual, what="built with", parts=("tokenizer",))
    older["tokenizer"]["chat_template_sha256"] = "1" * 64
    with pytest.raises(SirenError, match=r"tokenizer\.chat_template_sha256: 1{64} there"):
        check_same_model(older, actual, what="built with", parts=("tokenizer",))


def test_check_upstream_model_reads_the_manifest(tmp_path):
    from siren.io import write_manifest
    from siren.modeling import check_upstream_model

    base = _fake_model(tmp_path / "base", b"\x00" * 5000)
    other = _fake_model(tmp_path / "other", b"\x07" * 5000)
    upstream = tmp_path / "upstream"
    note = check_upstream_model(upstream, model_record(base), what="made with", made_by="stage X")
    assert note.startswith("note: ") and "no manifest.json" in note and "stage X" in note
    write_manifest(upstream, script="x.py", args={})
    assert "without a model record" in check_upstream_model(upstream, model_record(base), what="w", made_by="x")
    write_manifest(upstream, script="x.py", args={}, extra={"model": model_record(base)})
    assert check_upstream_model(upstream, model_record(base), what="w", made_by="x") is None
    with pytest.raises(SirenError, match=r"the states in .*upstream were made with .*base, not .*other"):
        check_upstream_model(upstream, model_record(other), what=f"the states in {upstream} were made with", made_by="x")
    # only the tokenizer compared: other weights, same tokenizer files, pass
    assert check_upstream_model(upstream, model_record(other), what="w", made_by="x", parts=("tokenizer",)) is None


def _safetensors(path, n_values: int = 64):
    import torch
    from safetensors.torch import save_file

    save_file({"weight": torch.arange(n_values, dtype=torch.float32)}, str(path))
    return path


def test_weight_files_cut_short_or_missing_are_named_before_loading(tmp_path):
    """Issue 20: a model.safetensors cut short was a deserializer's traceback (4a, 6); every loader
    now checks the files' layout first and names the file in one line."""
    import zipfile

    from siren.modeling import check_weight_files

    folder = tmp_path / "model"
    folder.mkdir()
    weights = _safetensors(folder / "model.safetensors")
    check_weight_files(folder)  # whole: nothing to say
    data = weights.read_bytes()

    weights.write_bytes(data[:-10])
    with pytest.raises(SirenError) as err:
        check_weight_files(folder)
    assert str(err.value) == (f"{weights} is cut short: its tensors need {len(data)} bytes, the file holds "
                              f"{len(data) - 10}; the weights are damaged or were not copied whole")
    weights.write_bytes(data[:20])
    with pytest.raises(SirenError, match=r"is cut short: its header needs \d+ bytes, the file holds 20"):
        check_weight_files(folder)
    weights.write_bytes(data[:5])
    with pytest.raises(SirenError, match="holds 5 bytes, less than a safetensors header"):
        check_weight_files(folder)
    weights.write_bytes(data + b"junk")
    with pytest.raises(SirenError, match="holds 4 bytes past its last tensor"):
        check_weight_files(folder)
    weights.write_bytes((8).to_bytes(8, "little") + b"not json" + data)
    with pytest.raises(SirenError, match="has no valid safetensors header"):
        check_weight_files(folder)
    weights.unlink()

    # Sharded: the index names a shard the folder lacks.
    _safetensors(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(SirenError, match=r"model\.safetensors\.index\.json names 1 weight file\(s\) the folder lacks "
                                         r"\(model-00002-of-00002\.safetensors\)"):
        check_weight_files(folder)
    _safetensors(folder / "model-00002-of-00002.safetensors")
    check_weight_files(folder)

    # A torch .bin (a zip archive) without its end.
    archive = folder / "pytorch_model.bin"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("archive/data.pkl", b"x" * 1000)
    check_weight_files(folder)
    archive.write_bytes(archive.read_bytes()[:500])
    with pytest.raises(SirenError, match=r"pytorch_model\.bin is a zip archive without its end \(cut short\)"):
        check_weight_files(folder)


def test_the_fingerprint_holds_config_and_generation_config_but_not_their_metadata(tmp_path):
    """Issue 20: config.json (rope_theta, rms_norm_eps) and generation_config.json (eos ids) are in
    the model's one fingerprint; a re-save that changes only transformers_version and spacing is not
    a change."""
    from siren.modeling import model_fingerprint

    folder = _fake_model(tmp_path / "m", b"\x00" * 5000)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 2, "transformers_version": "5.9.0"}))
    base = model_fingerprint(model_record(folder))
    assert set(base) == {"weights_digest", "config_sha256", "generation_config_sha256", "vocabulary_sha256",
                         "special_tokens_sha256", "chat_template_sha256"}

    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "transformers_version": "9.9", "_name_or_path": "x"},
                                                   indent=7))
    assert model_fingerprint(model_record(folder)) == base
    (folder / "config.json").write_text(json.dumps({**config, "rope_theta": 1e6}))
    assert model_fingerprint(model_record(folder))["config_sha256"] != base["config_sha256"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    changed = model_fingerprint(model_record(folder))
    assert changed["generation_config_sha256"] != base["generation_config_sha256"]
    assert {k: v for k, v in changed.items() if k != "generation_config_sha256"} == {
        k: v for k, v in base.items() if k != "generation_config_sha256"}
    (folder / "config.json").write_text("{not json")  # unreadable: its bytes still count
    assert model_fingerprint(model_record(folder))["config_sha256"] not in (None, base["config_sha256"])
