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
from siren.cli import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # The settings' flags come from SketchConfig's fields (siren.cli.add_dataclass_flags); the
    # paths, which are not settings of the stage's work, are declared here.
    from siren.sketch import SketchConfig

    parser = cli.stage_parser(__doc__)
    data = parser.add_argument_group("data")
    cli.add_dataclass_flags(parser, SketchConfig, groups={"data": data})  # --category first, in "data"
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
    return parser.parse_args(argv)


def default_output_dir(args: argparse.Namespace) -> Path:
    from siren.embedding import encoder_slug

    threshold = args.theta if args.sketch_rule == "mean" else args.pos_threshold
    return Path("data") / args.category / "sketch" / f"{encoder_slug(args.encoder_model)}-K{args.n_clusters}-{args.sketch_rule}@{threshold:g}"


def validate(args: argparse.Namespace):
    """Check flags, inputs and outputs before anything is loaded; returns (resolved paths, the
    stage's SketchConfig, its StageOutputs)."""
    from siren.data import resolve_category_dir, split_path
    from siren.io import check_output_clear_of_inputs, check_output_folder, missing_file_message
    from siren.outputs import StageOutputs
    from siren.sketch import SketchConfig, output_files
    from siren.topic_names import check_namer

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
            raise SirenError(missing_file_message(path, "split file"))
    history_path = Path(args.history_path) if args.history_path else split_dir / "history.jsonl.gz"
    if not history_path.is_file():
        raise SirenError(missing_file_message(history_path, "history file"))
    if args.meta_path is not None and not Path(args.meta_path).is_file():
        raise SirenError(f"--meta_path: {missing_file_message(args.meta_path, 'meta file')}")
    if args.tokenizer is not None and not Path(args.tokenizer).exists():
        raise SirenError(f"--tokenizer {args.tokenizer} does not exist")

    inputs = [history_path, *split_files, args.meta_path, args.tokenizer]
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args)
    outputs = StageOutputs(output_dir, output_files(args.n_clusters).values(), script="generate_interest_sketch.py",
                           inputs=inputs, overwrite=args.overwrite).check()
    if args.cache_dir is None:
        cache_dir = Path("data") / args.category / "sketch" / "embedding_cache"
    elif args.cache_dir.lower() == "none":
        cache_dir = None
    else:
        cache_dir = Path(args.cache_dir)
    if cache_dir is not None:
        check_output_clear_of_inputs(cache_dir, inputs, "--cache_dir")
        check_output_folder(cache_dir)
    settings = {f.name: getattr(args, f.name) for f in fields(SketchConfig)}
    config = SketchConfig(**{**settings, "cache_dir": cache_dir})
    return {"split_files": split_files, "history_path": history_path}, config, outputs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths, config, outputs = validate(args)

    from siren.io import RunTimer
    from siren.sketch import build_sketch

    timer = RunTimer()
    with outputs.claimed():
        result = build_sketch(config, paths["history_path"], paths["split_files"], meta_path=args.meta_path)

        start = time.perf_counter()
        with outputs.commit(args, timer) as staged:
            result.write(staged.dir)
            result.timings["write"] = time.perf_counter() - start
            staged.record(counts=result.counts(),
                          extra={"encoder": result.encoder, "kmeans_backend": result.clusters.backend,
                                 "timings": {step: round(seconds, 3) for step, seconds in result.timings.items()},
                                 "output_dir": str(outputs.folder)})

    for line in result.summary():
        print(line)
    print(f"wrote {', '.join(outputs.names)} to {outputs.folder} in {timer.seconds:.1f}s")


if __name__ == "__main__":
    sys.exit(run_main(main))
