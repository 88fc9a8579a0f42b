"""Stage 1, the long-term interest sketch (SPEC §1): item table, K-means topics, names, user sketches.

The pieces, in the order `generate_interest_sketch.py` calls them:
  item table     item id -> text, from an Amazon-2023 meta file or derived from the data files
  clustering     K-means over the item embeddings (faiss or scikit-learn), nearest-centre assignment
  exemplars      the `top_k` items nearest each centre
  topic names    keywords (class-based TF-IDF), an LLM, a user's file, or Topic_i
  user sketch    per user and topic: mean rating (paper) or positive/negative counts (authors' code)

Everything that touches all items or all users is vectorised with numpy; the only Python loops run
over history interactions once (to map item ids), over clusters, or over users.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from siren import SirenError
from siren.data import history_lines, iter_jsonl, parse_history_line, split_item_text

SKETCH_RULES = ("mean", "count")
KMEANS_BACKENDS = ("auto", "faiss", "sklearn")
NAME_SEPARATOR = " · "
LLM_THEME_MAX_WORDS = 10


# ---------------------------------------------------------------------------------------------
# Item table
# ---------------------------------------------------------------------------------------------


@dataclass
class ItemTable:
    """Every item the topics are built from. `texts` are encoded; titles and categories name topics."""

    item_ids: list[str]
    texts: list[str]
    titles: list[str]
    categories: list[list[str]]
    source: str
    conflicting_texts: int = 0  # ids seen with two different texts (the first one is kept)

    def __len__(self) -> int:
        return len(self.item_ids)

    def index(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.item_ids)}

    @classmethod
    def from_found(cls, found: dict[str, tuple], source: str, conflicting_texts: int) -> ItemTable:
        """Build from {item_id: (text, title, categories)}, items sorted by id."""
        ids = sorted(found)
        return cls(
            item_ids=ids,
            texts=[found[i][0] for i in ids],
            titles=[found[i][1] for i in ids],
            categories=[found[i][2] for i in ids],
            source=source,
            conflicting_texts=conflicting_texts,
        )


def _split_categories(categories: str) -> list[str]:
    return [c.strip() for c in categories.split("|") if c.strip()]


def items_from_data(history_rows: list[dict], split_rows: Iterable[dict], history_path: str = "history") -> ItemTable:
    """Item texts derived from the data files: history lines (aligned with `history_asins`) and targets.

    A history line is "Title, categories, rating" and a target "Title, categories"; titles may hold
    commas, so both are split from the right. Items are ordered by id so the table does not depend
    on file order.
    """
    found: dict[str, tuple[str, str, list[str]]] = {}
    conflicts = 0

    def add(item_id: str, title: str, categories: str) -> None:
        nonlocal conflicts
        text = f"{title}, {categories}" if categories else title
        if not text.strip():
            return
        known = found.get(item_id)
        if known is None:
            found[item_id] = (text, title, _split_categories(categories))
        elif known[0] != text:
            conflicts += 1

    for row in history_rows:
        lines = history_lines(row["history"])
        asins = row["history_asins"]
        if len(lines) != len(asins):
            raise SirenError(
                f"{history_path}: user {row['user_id']} has {len(lines)} history lines but {len(asins)} history_asins; "
                "they must be aligned to name the items"
            )
        for line, asin in zip(lines, asins, strict=True):
            parsed = parse_history_line(line)
            add(str(asin), parsed.title, parsed.categories)
    for row in split_rows:
        title, categories = split_item_text(row["target"])
        add(str(row["parent_asin"]), title, categories)

    return ItemTable.from_found(found, "data files (history lines + split targets)", conflicts)


def _as_text_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if v is not None and str(v).strip()]
    return [str(value)]


def items_from_meta(meta_path: str | os.PathLike, keep_ids: set[str] | None = None) -> ItemTable:
    """Item texts from an Amazon Reviews 2023 meta file (`parent_asin`, `title`, `categories`, ...).

    The encoded text is "title, cat1|cat2" followed by features and description; `keep_ids`
    restricts the table to the items the data uses (a full meta file holds far more).
    """
    found: dict[str, tuple[str, str, list[str]]] = {}
    conflicts = 0
    for lineno, record in iter_jsonl(meta_path):
        if "parent_asin" not in record:
            raise SirenError(f"{meta_path}:{lineno}: missing field parent_asin")
        item_id = str(record["parent_asin"])
        if keep_ids is not None and item_id not in keep_ids:
            continue
        title = " ".join(_as_text_list(record.get("title")))
        categories = _as_text_list(record.get("categories"))
        details = " ".join(_as_text_list(record.get("features")) + _as_text_list(record.get("description")))
        text = f"{title}, {'|'.join(categories)}" if categories else title
        if details:
            text = f"{text}. {details}" if text else details
        if not text.strip():
            continue
        if item_id in found:
            conflicts += found[item_id][0] != text
            continue
        found[item_id] = (text, title, categories)
    if not found:
        raise SirenError(f"{meta_path}: no usable item (none with a title or text{' among the data items' if keep_ids else ''})")
    return ItemTable.from_found(found, f"meta file {meta_path}", conflicts)


def distinct_texts(texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(distinct texts in first-seen order, index of each input text among them).

    Several items can share a text (editions of one film); each distinct text is encoded once.
    """
    position: dict[str, int] = {}
    index = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        index[i] = position.setdefault(text, len(position))
    return list(position), index


# ---------------------------------------------------------------------------------------------
# Clustering
# ---------------------------------------------------------------------------------------------


@dataclass
class KMeansResult:
    assignment: np.ndarray  # int64 [N]
    distance: np.ndarray  # float32 [N], Euclidean distance to the assigned centre
    centroids: np.ndarray  # float32 [K, D]
    backend: str


def resolve_kmeans_backend(backend: str) -> str:
    if backend not in KMEANS_BACKENDS:
        raise SirenError(f"unknown --kmeans_backend {backend!r}; expected one of {', '.join(KMEANS_BACKENDS)}")
    if backend == "sklearn":
        return backend
    try:
        import faiss  # noqa: F401
    except ImportError:
        if backend == "faiss":
            raise SirenError("--kmeans_backend faiss needs the faiss-cpu package (pip install faiss-cpu)") from None
        return "sklearn"
    return "faiss"


def nearest_centres(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assignment to the nearest centre and the distance to it, as one [N, K] matrix product.

    float64 so the same vectors and centres always give the same argmin, whichever BLAS ran.
    """
    x = vectors.astype(np.float64)
    c = centroids.astype(np.float64)
    squared = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    assignment = squared.argmin(1)
    distance = np.sqrt(np.maximum(squared[np.arange(len(x)), assignment], 0.0))
    return assignment.astype(np.int64), distance.astype(np.float32)


def kmeans(vectors: np.ndarray, k: int, *, backend: str = "auto", niter: int = 100, nredo: int = 5, seed: int = 0) -> KMeansResult:
    """K-means over the rows of `vectors`; the same seed and backend give the same result."""
    n = len(vectors)
    if k < 1:
        raise SirenError(f"the number of clusters must be >= 1, got {k}")
    if k > n:
        raise SirenError(f"--n_clusters {k} is larger than the number of items ({n})")
    backend = resolve_kmeans_backend(backend)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    # One thread: an iteration is ~N*K*D = 10^8 flops, so OpenMP synchronisation costs more than it
    # saves (on a shared 2-core machine two threads were 14x slower), and the result cannot depend
    # on the thread count.
    if backend == "faiss":
        import faiss

        threads_before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            # faiss subsamples to 256 points per centre by default; use every item instead.
            model = faiss.Kmeans(
                x.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                max_points_per_centroid=max(1, math.ceil(n / k)) + 1, min_points_per_centroid=1,
            )
            model.train(x)
        finally:
            faiss.omp_set_num_threads(threads_before)
        centroids = np.asarray(model.centroids, dtype=np.float32)
    else:
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            model = KMeans(n_clusters=k, n_init=nredo, max_iter=niter, random_state=seed, algorithm="lloyd")
            model.fit(x)
        centroids = model.cluster_centers_.astype(np.float32)
    assignment, distance = nearest_centres(x, centroids)
    return KMeansResult(assignment=assignment, distance=distance, centroids=centroids, backend=backend)


def cluster_exemplars(result: KMeansResult, items: ItemTable, top_k: int) -> dict[int, list[dict]]:
    """The `top_k` items nearest each centre, nearest first; one entry per distinct text."""
    exemplars: dict[int, list[dict]] = {}
    for cluster in range(len(result.centroids)):
        members = np.flatnonzero(result.assignment == cluster)
        members = members[np.argsort(result.distance[members], kind="stable")]
        chosen, seen = [], set()
        for i in members:
            if items.texts[i] in seen:
                continue
            seen.add(items.texts[i])
            chosen.append({"item_id": items.item_ids[i], "text": items.texts[i], "distance": round(float(result.distance[i]), 6)})
            if len(chosen) == top_k:
                break
        exemplars[cluster] = chosen
    return exemplars


# ---------------------------------------------------------------------------------------------
# Topic names
# ---------------------------------------------------------------------------------------------

# Function words, plus words that describe an item's physical format rather than its subject
# (they would otherwise name whole clusters "DVD · Edition").
STOP_WORDS = frozenset(
    """a about after all also an and any are as at be been before but by can could did do does for from
    had has have he her him his how i if in into is it its just me more most my new no not of off on one
    only or our out over she so some than that the their them then there these they this those through to
    too two under up us very was we were what when where which who why will with without you your
    vol volume part edition editions disc discs dvd dvds blu ray bluray vhs widescreen fullscreen
    region digital copy hd uhd import format pack paperback hardcover kindle audiobook
    special collection complete combo set box series season seasons movie movies film films tv
    book books novel""".split()
)
_WORD = re.compile(r"[^\W\d_][\w'’&-]*", re.UNICODE)
# Amazon category paths mix subjects ("Horror") with store navigation ("Featured Categories",
# "Today's Deals", "All Fox Titles"): a label holding one of these words names a shelf, not a topic.
STORE_LABEL_WORDS = frozenset("featured deals releases specials blowout titles general store shop".split())
MAX_CATEGORY_TERMS = 2  # per name, so title words (series, subjects) get a place too


def _is_topic_label(label: str) -> bool:
    words = [w.lower() for w in re.findall(r"[^\W\d_]+", label)]
    if not words or any(w in STORE_LABEL_WORDS for w in words):
        return False
    return not all(w in STOP_WORDS for w in words)


def _title_terms(title: str) -> list[tuple[str, str]]:
    """(key, surface) unigrams and bigrams of a title, stop words dropped."""
    words = []
    for match in _WORD.finditer(title):
        surface = re.sub(r"['’]s$", "", match.group(0)).strip("-'’")
        key = surface.lower()
        informative = len(key) >= 3 and not all(w in STOP_WORDS for w in re.findall(r"[^\W\d_]+", key))
        words.append((key, surface) if informative else None)
    terms = [w for w in words if w is not None]
    for left, right in zip(words, words[1:], strict=False):
        if left is not None and right is not None:
            terms.append((f"{left[0]} {right[0]}", f"{left[1]} {right[1]}"))
    return terms


def _display(surface: str) -> str:
    return surface[:1].upper() + surface[1:]


def _overlaps(key: str, chosen: list[str]) -> bool:
    """True when `key` repeats a chosen term's words ("marvel" vs "marvel comics")."""
    def words_of(text: str) -> set[str]:
        return set(re.split(r"[\s-]+", text))

    words = words_of(key)
    return any(words <= words_of(c) or words_of(c) <= words for c in chosen)


@dataclass
class KeywordScores:
    """Class-based TF-IDF of every term in every cluster, ranked."""

    terms: list[str]  # display form, by term id
    keys: list[str]
    is_category: list[bool]
    ranked: list[np.ndarray]  # per cluster: term ids, best first, supported by enough members
    scores: np.ndarray  # [K, V]


def keyword_scores(
    assignment: np.ndarray, items: ItemTable, k: int, min_share: float = 0.05, max_item_share: float = 0.5,
) -> KeywordScores:
    """Class-based TF-IDF (as in BERTopic): tf of a term in the cluster's pooled titles and categories,
    times log(1 + A / f), with A the mean number of terms per cluster and f the term's total count.

    Each term counts once per item, and a term must occur in at least `min_share` of a cluster's
    items (and in two of them) to name it, so one odd title cannot name a topic. A term on more than
    `max_item_share` of all items ("Movies & TV") describes the catalogue, not a topic, and is dropped.
    """
    vocabulary: dict[str, int] = {}
    surfaces: list[Counter] = []
    rows: list[int] = []
    cols: list[int] = []
    for i, (title, categories) in enumerate(zip(items.titles, items.categories, strict=True)):
        item_terms = {(("cat:" if _is_topic_label(c) else "shelf:") + c.lower(), c) for c in categories}
        item_terms.update(("w:" + key, surface) for key, surface in _title_terms(title))
        for key, surface in item_terms:
            term_id = vocabulary.get(key)
            if term_id is None:
                term_id = vocabulary[key] = len(vocabulary)
                surfaces.append(Counter())
            surfaces[term_id][surface] += 1
            rows.append(i)
            cols.append(term_id)
    n_terms = max(len(vocabulary), 1)
    rows_arr, cols_arr = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    counts = np.bincount(assignment[rows_arr] * n_terms + cols_arr, minlength=k * n_terms).reshape(k, n_terms).astype(np.float64)
    per_cluster = counts.sum(1, keepdims=True)
    term_totals = counts.sum(0)
    mean_terms = per_cluster.mean()
    tf = np.divide(counts, per_cluster, out=np.zeros_like(counts), where=per_cluster > 0)
    idf = np.log1p(np.divide(mean_terms, term_totals, out=np.zeros_like(term_totals), where=term_totals > 0))
    scores = tf * idf[None, :]

    sizes = np.bincount(assignment, minlength=k)
    keys = [""] * len(vocabulary)
    is_category = [False] * len(vocabulary)
    for key, term_id in vocabulary.items():
        kind, keys[term_id] = key.split(":", 1)
        is_category[term_id] = kind in ("cat", "shelf")
    terms = [_display(s.most_common(1)[0][0]) for s in surfaces]
    usable = term_totals <= max_item_share * len(assignment)
    informative = np.array([not key.startswith("shelf:") for key in vocabulary], dtype=bool)
    ranked = []
    for cluster in range(k):
        # Subjects first; a shelf or format label ("Blu-ray") only when the cluster's subjects run
        # out (a cluster of new Blu-ray releases is named by that); a term few members share only
        # when nothing else is left.
        support = max(2.0, min_share * sizes[cluster])
        order = np.argsort(-scores[cluster], kind="stable")
        order = order[usable[order]]
        supported = counts[cluster, order] >= support
        tiers = [order[supported & informative[order]], order[supported & ~informative[order]]]
        if not sum(len(t) for t in tiers):
            tiers.append(order[(counts[cluster, order] > 0) & informative[order]])
        ranked.append(np.concatenate(tiers))
    return KeywordScores(terms=terms, keys=keys, is_category=is_category, ranked=ranked, scores=scores)


def keyword_topic_names(assignment: np.ndarray, items: ItemTable, k: int, n_terms: int = 3) -> list[str]:
    """Readable, distinct names such as "Superhero · Marvel · Action & Adventure"."""
    kw = keyword_scores(assignment, items, k)
    picks: list[list[int]] = []
    cursors: list[int] = []
    for cluster in range(k):
        chosen: list[int] = []
        cursor = 0
        ranked = kw.ranked[cluster]
        while len(chosen) < n_terms and cursor < len(ranked):
            term_id = int(ranked[cursor])
            cursor += 1
            n_category = sum(kw.is_category[c] for c in chosen)
            if kw.is_category[term_id] and n_category >= MAX_CATEGORY_TERMS:
                continue
            if not _overlaps(kw.keys[term_id], [kw.keys[c] for c in chosen]):
                chosen.append(term_id)
        picks.append(chosen)
        cursors.append(cursor)

    def name_of(cluster: int) -> str:
        return NAME_SEPARATOR.join(kw.terms[t] for t in picks[cluster]) or f"Topic_{cluster}"

    # Two clusters with the same name would make a sketch ambiguous: the cluster whose shared
    # name scores lower swaps its last term for its next-best one until every name is unique.
    for _ in range(k * n_terms + 1):
        by_name: dict[str, list[int]] = {}
        for cluster in range(k):
            by_name.setdefault(name_of(cluster).lower(), []).append(cluster)
        clashes = [members for members in by_name.values() if len(members) > 1]
        if not clashes:
            break
        for members in clashes:
            members.sort(key=lambda c: -sum(kw.scores[c, t] for t in picks[c]))
            for cluster in members[1:]:
                ranked = kw.ranked[cluster]
                replaced = False
                while cursors[cluster] < len(ranked):
                    term_id = int(ranked[cursors[cluster]])
                    cursors[cluster] += 1
                    others = [kw.keys[t] for t in picks[cluster][:-1]]
                    if not _overlaps(kw.keys[term_id], others):
                        picks[cluster] = picks[cluster][:-1] + [term_id] if picks[cluster] else [term_id]
                        replaced = True
                        break
                if not replaced:
                    picks[cluster] = []  # falls back to the always-unique Topic_i
    names = [name_of(c) for c in range(k)]
    return disambiguate([n if n else f"Topic_{c}" for c, n in enumerate(names)], [[] for _ in range(k)])


def disambiguate(names: list[str], hints: list[list[str]]) -> list[str]:
    """Make names unique (case-insensitively): a repeated name gets its cluster's first hint that
    is not already in it, in parentheses, or else its cluster number."""
    result = list(names)
    seen: Counter = Counter(n.lower() for n in names)
    for cluster, name in enumerate(names):
        if seen[name.lower()] < 2:
            continue
        extra = next((h for h in hints[cluster] if h.lower() not in name.lower()), None)
        candidate = f"{name} ({extra})" if extra else f"{name} (topic {cluster})"
        if candidate.lower() in {r.lower() for r in result}:
            candidate = f"{name} (topic {cluster})"
        result[cluster] = candidate
    return result


def placeholder_names(k: int) -> list[str]:
    return [f"Topic_{i}" for i in range(k)]


def names_from_file(path: str | os.PathLike, k: int) -> list[str]:
    """Names given by the user: a JSON list of K names or an object {cluster: name}."""
    path = Path(path)
    if not path.is_file():
        raise SirenError(f"--namer file: {path} does not exist")
    from siren.io import read_json

    data = read_json(path)
    if isinstance(data, list):
        data = {str(i): v for i, v in enumerate(data)}
    if not isinstance(data, dict):
        raise SirenError(f"{path}: expected a list of {k} names or an object {{cluster: name}}")
    missing = [str(i) for i in range(k) if str(i) not in data]
    extra = [key for key in data if key not in {str(i) for i in range(k)}]
    if missing or extra:
        raise SirenError(f"{path}: needs exactly clusters 0..{k - 1}; missing {missing or 'none'}, unexpected {extra or 'none'}")
    names = [data[str(i)] for i in range(k)]
    bad = [str(i) for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        raise SirenError(f"{path}: cluster(s) {', '.join(bad)} have an empty or non-string name")
    names = [" ".join(n.split()) for n in names]
    repeated = sorted({n for n in names if sum(m.lower() == n.lower() for m in names) > 1})
    if repeated:
        raise SirenError(f"{path}: repeated topic name(s) {repeated}; a sketch could not tell the topics apart")
    return names


# --- LLM namer ---------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_LABEL_PREFIX = re.compile(r"^(?:the\s+)?(?:theme|topic|name|answer)\s*[:\-–]\s*", re.IGNORECASE)


def theme_prompt(exemplars: list[dict], noun: str, max_chars: int = 200) -> list[dict]:
    """Chat messages asking for one short theme shared by a cluster's exemplars."""
    listing = "\n".join(f"- {e['text'][:max_chars]}" for e in exemplars)
    return [
        {"role": "system", "content": f"You are a librarian who labels groups of {noun}s with a short, specific theme."},
        {
            "role": "user",
            "content": (
                f"These {len(exemplars)} {noun}s (title, categories) were grouped together, most typical first:\n"
                f"{listing}\n\n"
                f"What theme do they share? Reply with the theme only: at most {LLM_THEME_MAX_WORDS} words, "
                "no quotes, no explanation, for example: Gritty crime dramas and heist thrillers"
            ),
        },
    ]


def parse_theme(reply: str | None) -> str | None:
    """The theme in an LLM reply: first non-empty line, without think blocks, labels, quotes or a
    final period, cut to LLM_THEME_MAX_WORDS words. None when nothing usable is left."""
    if not reply:
        return None
    text = _THINK_BLOCK.sub("", reply)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    for line in text.splitlines():
        line = line.strip().lstrip("-*#>•0123456789.) ").strip()
        line = _LABEL_PREFIX.sub("", line).strip().strip("\"'`*“”‘’").strip()
        line = line.rstrip(".").strip()
        if any(ch.isalpha() for ch in line):
            return " ".join(line.split()[:LLM_THEME_MAX_WORDS])
    return None


def openai_chat(base_url: str, model: str, api_key: str | None, timeout: float = 120.0) -> Callable[[list[dict]], str]:
    """A function sending chat messages to an OpenAI-compatible /chat/completions endpoint."""
    import urllib.error
    import urllib.request

    url = base_url.rstrip("/") + "/chat/completions"

    def ask(messages: list[dict]) -> str:
        body = json.dumps({"model": model, "messages": messages, "temperature": 0.0, "max_tokens": 64}).encode()
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as err:
            raise SirenError(f"LLM endpoint {url} answered HTTP {err.code}: {err.read()[:200].decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            raise SirenError(f"cannot reach LLM endpoint {url} ({getattr(err, 'reason', err)})") from None
        except json.JSONDecodeError:
            raise SirenError(f"LLM endpoint {url} did not return JSON") from None
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise SirenError(f"LLM endpoint {url} returned no choices[0].message.content") from None

    return ask


def local_hf_chat(model_path: str, device: str = "auto", max_new_tokens: int = 48) -> Callable[[list[dict]], str]:
    """A function answering chat messages with a local Hugging Face causal LM (greedy decoding)."""
    import torch
    from transformers import AutoModelForCausalLM

    from siren.embedding import resolve_device
    from siren.tokenization import load_tokenizer

    tokenizer = load_tokenizer(model_path, require_chat_template=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise SirenError(f"cannot load --llm_local_model {model_path}: {str(err).splitlines()[0]}") from None
    model.to(resolve_device(device)).eval()

    def ask(messages: list[dict]) -> str:
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=False)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
            )
        return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    return ask


@dataclass
class LLMNaming:
    names: list[str]
    replies: list[str]
    invalid_clusters: list[int] = field(default_factory=list)  # reply unusable: keyword name used
    disambiguated_clusters: list[int] = field(default_factory=list)


def llm_topic_names(
    exemplars: dict[int, list[dict]], noun: str, ask: Callable[[list[dict]], str], fallback: list[str], progress: bool = True,
) -> LLMNaming:
    """Ask the LLM for each cluster's theme. An unusable reply keeps the cluster's keyword name and
    is reported; names that come back twice are told apart with the cluster's keyword name."""
    from tqdm import tqdm

    k = len(fallback)
    names, replies, invalid = [], [], []
    for cluster in tqdm(range(k), desc="naming topics", disable=not progress):
        if not exemplars.get(cluster):
            names.append(fallback[cluster])
            replies.append("")
            invalid.append(cluster)
            continue
        reply = ask(theme_prompt(exemplars[cluster], noun))
        theme = parse_theme(reply)
        replies.append(reply)
        if theme is None:
            invalid.append(cluster)
            theme = fallback[cluster]
        names.append(theme)
    final = disambiguate(names, [[fallback[c]] for c in range(k)])
    changed = [c for c in range(k) if final[c] != names[c]]
    return LLMNaming(names=final, replies=replies, invalid_clusters=invalid, disambiguated_clusters=changed)


# ---------------------------------------------------------------------------------------------
# User sketches
# ---------------------------------------------------------------------------------------------


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
