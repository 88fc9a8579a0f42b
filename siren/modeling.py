"""Loading a causal LM, naming its device, identifying a model and its tokenizer, and the
rating-token maths shared by stage 5's evaluation and stage 6.

From next-token logits to ratings: the distribution is renormalised over the tokens "1".."5"
(ids from the tokenizer); the constrained rating is its argmax, the expected rating sum_r p(r) * r.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from siren import SirenError
from siren.prompts import answer_tag_ids
from siren.tokenizer_identity import file_sha256_or_none, json_digest, read_json_object, tokenizer_files_record

if TYPE_CHECKING:
    import torch


def resolve_dtype(name: str, device_type: str):
    """torch dtype for --dtype; `auto` is bfloat16 on a CUDA device that supports it, else float32
    (bf16 matmuls on a CPU are slow and lossy)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if device_type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise SirenError(f"unknown dtype {name!r}; expected auto, float32, bfloat16 or float16")
    return dtypes[name]


def load_causal_lm(model_path: str | os.PathLike, dtype, device, attn_implementation: str | None = None):
    """A causal LM in eval mode on `device`. A path that holds no model, or whose weight files are
    cut short (`check_weight_files`, before anything loads), is a one-line error.
    `attn_implementation`: None is transformers' default (sdpa)."""
    from safetensors import SafetensorError

    path = Path(model_path)
    if not (path / "config.json").is_file():
        raise SirenError(f"{path} holds no model (no config.json)")
    check_weight_files(path)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation=attn_implementation)
    except (OSError, ValueError, SafetensorError) as err:
        raise SirenError(f"cannot load a model from {path}: {str(err).splitlines()[0]}") from None
    return model.to(device).eval()


# --------------------------------------------------------------------------------------------------
# Weight files checked before loading: a copy cut short (a full disk, an interrupted transfer) is
# named in one line by every loader (transformers, vLLM), not by a deserializer's traceback.


def _safetensors_problem(path: Path) -> str | None:
    """What is wrong with a .safetensors file's layout, or None. The format is an 8-byte
    little-endian header length, a JSON header giving each tensor's [begin, end) in the data
    block, then the data block, which must end exactly where the file ends."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"holds {size} bytes, less than a safetensors header"
        header_bytes = int.from_bytes(head, "little")
        if 8 + header_bytes > size:
            return f"is cut short: its header needs {8 + header_bytes} bytes, the file holds {size}"
        try:
            header = json.loads(handle.read(header_bytes))
            ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
        except (ValueError, UnicodeDecodeError, TypeError, KeyError, IndexError, AttributeError):
            return "has no valid safetensors header"
    expected = 8 + header_bytes + max(ends, default=0)
    if size < expected:
        return f"is cut short: its tensors need {expected} bytes, the file holds {size}"
    if size > expected:
        return f"holds {size - expected} bytes past its last tensor"
    return None


def check_weight_files(model_path: str | os.PathLike) -> None:
    """Refuse (one line) a model folder whose weights cannot all be read: a .safetensors file whose
    bytes do not match its header, a torch .bin zip archive without its end (cut short), a shard
    that model.safetensors.index.json names but the folder lacks. Reads headers only."""
    import zipfile

    folder = Path(model_path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = (read_json_object(index) or {}).get("weight_map")
        if not isinstance(weight_map, dict):
            raise SirenError(f"{index}: no weight_map (not a safetensors index)")
        missing = sorted({str(name) for name in weight_map.values()} - {p.name for p in folder.iterdir()})
        if missing:
            raise SirenError(f"{folder}: {index.name} names {len(missing)} weight file(s) the folder lacks "
                             f"({', '.join(missing[:3])})")
    for path in sorted(folder.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            raise SirenError(f"{path} {problem}; the weights are damaged or were not copied whole")
    for path in sorted(folder.glob("*.bin")):
        with open(path, "rb") as handle:
            is_zip = handle.read(4) == b"PK\x03\x04"
        if is_zip and not zipfile.is_zipfile(path):
            raise SirenError(f"{path} is a zip archive without its end (cut short); the weights are damaged "
                             "or were not copied whole")


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def rating_probabilities(next_logits: torch.Tensor, rating_token_ids: dict[int, int]) -> torch.Tensor:
    """`[B, V]` logits -> `[B, 5]` probabilities of ratings 1..5, renormalised over those tokens."""
    import torch

    ids = torch.tensor([rating_token_ids[r] for r in sorted(rating_token_ids)], device=next_logits.device)
    return torch.softmax(next_logits[:, ids].float(), dim=-1)


def constrained_ratings(probs: torch.Tensor, ratings=(1, 2, 3, 4, 5)) -> torch.Tensor:
    """The most probable rating of each row (float)."""
    import torch

    values = torch.tensor([float(r) for r in ratings], device=probs.device)
    return values[probs.argmax(-1)]


def expected_ratings(probs: torch.Tensor, ratings=(1, 2, 3, 4, 5)) -> torch.Tensor:
    """sum_r p(r) * r per row: a continuous prediction that hedges between neighbouring stars."""
    import torch

    values = torch.tensor([float(r) for r in ratings], device=probs.device)
    return (probs * values).sum(-1)


def base_fingerprint(config) -> dict:
    """What identifies a base model for an adapter: architecture and shapes."""
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size")
    return {k: getattr(config, k, None) for k in keys}


# --------------------------------------------------------------------------------------------------
# Identity of a model folder, recorded in manifests and compared by later stages


_SAMPLES_PER_FILE, _SAMPLE_BYTES = 1024, 4096


def weights_digest(model_path: str | os.PathLike) -> str | None:
    """A fingerprint of a model folder's weights without reading them whole.

    SHA-256 over each weight file's name and size and 1,024 evenly spaced 4 KiB samples of it
    (4 MiB per file whatever its size, milliseconds for Qwen3-4B's 8 GB). A merged LoRA on K/V, about
    5% of Qwen3-4B's bytes spread over every layer, is hit by about 50 samples per file, so two
    folders whose weights differ anywhere substantial get different digests; identical files get
    identical ones. None when the folder holds no .safetensors/.bin files.
    """
    folder = Path(model_path)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin") and p.is_file())
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}:".encode())
        step = max(1, size // _SAMPLES_PER_FILE)
        with open(path, "rb") as handle:
            for offset in range(0, size, step):
                handle.seek(offset)
                digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


# Keys of config.json and generation_config.json that say how the file was written, not what the
# model computes or when it stops: a re-save by a newer transformers changes them.
_CONFIG_METADATA_KEYS = frozenset({"transformers_version", "_name_or_path", "_commit_hash", "_from_model_config"})


def _config_sha256(path: Path) -> str | None:
    """SHA-256 of a model config file's settings (key order and spacing ignored, metadata keys left
    out); of its bytes when it is not a JSON object; None when there is no file."""
    if not path.is_file():
        return None
    config = read_json_object(path)
    if config is None:
        return file_sha256_or_none(path)
    return json_digest({key: value for key, value in config.items() if key not in _CONFIG_METADATA_KEYS})


def config_files_record(model_path: str | os.PathLike) -> dict:
    """Digests of what decides the computation and the stopping of a model folder besides its
    weights and tokenizer: config.json (rope_theta, rms_norm_eps, the attention and layer settings,
    ...) and generation_config.json (the eos ids generation stops at, sampling defaults)."""
    folder = Path(model_path)
    return {
        "config_sha256": _config_sha256(folder / "config.json"),
        "generation_config_sha256": _config_sha256(folder / "generation_config.json"),
    }


def model_record(model_path: str | os.PathLike) -> dict:
    """What identifies a model folder for the manifests: its path, architecture and shapes (from
    config.json), a weights fingerprint, its config files and its tokenizer files. Later stages
    compare the parts that matter to them with `check_same_model`; a resume compares them all
    (`model_fingerprint`)."""
    folder = Path(model_path)
    config = read_json_object(folder / "config.json") or {}
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size")
    return {
        "path": str(folder.resolve()),
        "architecture": {k: config.get(k) for k in keys},
        "weights_digest": weights_digest(folder) if folder.is_dir() else None,
        "config": config_files_record(folder) if folder.is_dir() else None,
        "tokenizer": tokenizer_files_record(folder) if folder.is_dir() else None,
    }


# The parts of a model_record that change what the model computes or when it stops generating:
# the weights, config.json and generation_config.json, the tokenizer and chat template.
FINGERPRINT_PARTS = ("weights_digest", "config", "tokenizer")


def model_fingerprint(record: dict) -> dict:
    """Every identity digest of a `model_record` as one flat dict (weights_digest, config_sha256,
    generation_config_sha256, vocabulary_sha256, special_tokens_sha256, chat_template_sha256).
    What a resumed stage compares: work made by a model that differs in any of them is not
    continued."""
    fingerprint = {}
    for part in FINGERPRINT_PARTS:
        value = record.get(part)
        if isinstance(value, dict):
            fingerprint.update(value)
        else:
            fingerprint[part] = value
    return fingerprint


def check_same_model(recorded: dict | None, actual: dict, *, what: str, parts=("architecture", "weights_digest")) -> None:
    """Refuse (one line) when `recorded` (a `model_record` from an upstream manifest) and `actual`
    differ in any of `parts`; a record that lacks a part (an older manifest) is not compared on it.

        check_same_model(manifest["model"], model_record(args.model),
                         what="the teacher states in results_hidden/Movies were extracted with")
    """
    if not recorded:
        return
    for part in parts:
        old, new = recorded.get(part), actual.get(part)
        if old is None or new is None or old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            # Only what both records hold: an older manifest names some parts otherwise.
            differing = [k for k in sorted(set(old) & set(new))
                         if old[k] is not None and new[k] is not None and old[k] != new[k]]
            if not differing:
                continue
            key = differing[0]
            detail = f"{part}.{key}: {old.get(key)} there, {new.get(key)} here"
        else:
            detail = f"{part} differs"
        raise SirenError(f"{what} {recorded.get('path')}, not {actual.get('path')} ({detail})")


# The key under which a stage's manifest.json holds `model_record` of its --model.
MANIFEST_MODEL_KEY = "model"


def check_upstream_model(folder: str | os.PathLike, actual: dict, *, what: str, made_by: str,
                         parts=("architecture", "weights_digest")) -> str | None:
    """Compare the model record in `folder`/manifest.json (written by `made_by`) with `actual`.

    Refuses a mismatch in `parts` (one-line SirenError, see `check_same_model`). Returns a note to
    print when there is nothing to compare (no manifest, or one without a model record: an older
    run), else None.
    """
    from siren.io import read_manifest

    manifest = read_manifest(folder)
    recorded = manifest.get(MANIFEST_MODEL_KEY) if isinstance(manifest, dict) else None
    if not isinstance(recorded, dict):
        where = "no manifest.json" if manifest is None else "a manifest.json without a model record"
        return f"note: {folder} has {where} (an older {made_by}?), so which model made it is not checked"
    check_same_model(recorded, actual, what=what, parts=parts)
    return None


# Stage 5 writes this file into adapter/: the architecture of the base (the fingerprint keys at the
# top level, as older runs wrote them) and, under "model", the base's model_record, whose weights
# digest stage 6 compares with its --model.
ADAPTER_BASE_NAME = "base_model.json"


def adapter_base_record(model_path: str | os.PathLike, config) -> dict:
    """base_model.json's content for an adapter trained on the model in `model_path`."""
    return {**base_fingerprint(config), MANIFEST_MODEL_KEY: model_record(model_path)}


def model_label(model_path: str | os.PathLike, adapter_path: str | os.PathLike | None = None) -> str:
    """A short name for a model folder, for default output paths; `<run>/merged` is named after `<run>`."""
    def name_of(path) -> str:
        path = Path(path).resolve()
        return path.parent.name if path.name in ("merged", "adapter") else path.name

    label = name_of(model_path)
    return f"{label}+{name_of(adapter_path)}" if adapter_path else label


def tokenizer_record(tokenizer, path: str | os.PathLike) -> dict:
    """The tokenizer a stage rendered prompts with, for its manifest: its identity (the same digests
    `tokenizer_files_record` gives, which later stages compare), its size and the aligned tokens."""
    path = Path(path)
    return {
        "path": str(path.resolve()),
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer),
        **tokenizer_files_record(path),
        "answer_tag_ids": answer_tag_ids(tokenizer),
    }
