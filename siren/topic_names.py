"""Stage 1's topic names: keywords (offline), an LLM, a user's file, or Topic_i.

  keywords   class-based TF-IDF over titles and category labels (`keyword_topic_names`)
  llm        one short theme per topic from its exemplars (`llm_topic_names`), asked through an
             OpenAI-compatible endpoint or a local Hugging Face model (siren.llm_chat)
  file       a JSON list or {cluster: name} (`names_from_file`)
  none       Topic_0, Topic_1, ... (`placeholder_names`)

`name_topics` picks among them for the `--namer` value; every path gives K unique names.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from siren import SirenError
from siren.io import read_json

if TYPE_CHECKING:
    from siren.items import ItemTable

NAME_SEPARATOR = " · "
LLM_THEME_MAX_WORDS = 10


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
        # Term ids follow this loop and break ties in the ranking, so its order is fixed here (a set
        # of strings iterates in an order that changes with the per-process hash seed): longer terms
        # first, so a bigram that always occurs with its words ("Charlie Brown") wins the tie.
        for key, surface in sorted(item_terms, key=lambda term: (-len(term[0].split()), term)):
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
# Any markup tag: <think>, </answer>, <|im_end|>. A name holding one is a piece of the model's
# protocol, not a theme.
_TAG = re.compile(r"<\s*/?\s*\|?\s*[A-Za-z_][^<>]*>")
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
    final period, cut to LLM_THEME_MAX_WORDS words. None when nothing usable is left: an empty
    reply, one that is all thinking (a `<think>` never closed: the token limit cut it), or a
    theme that holds a tag."""
    if not reply:
        return None
    text = _THINK_BLOCK.sub("", reply)
    if "</think>" in text.lower():
        text = text[text.lower().rindex("</think>") + len("</think>"):]
    if text.lstrip().lower().startswith("<think>"):
        return None  # the reply ended inside its reasoning
    for line in text.splitlines():
        line = line.strip().lstrip("-*#>•0123456789.) ").strip()
        line = _LABEL_PREFIX.sub("", line).strip().strip("\"'`*“”‘’").strip()
        line = line.rstrip(".").strip()
        if any(ch.isalpha() for ch in line):
            return None if _TAG.search(line) else " ".join(line.split()[:LLM_THEME_MAX_WORDS])
    return None


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


# --- choosing a namer ----------------------------------------------------------------------------

NAMERS_HELP = "keywords | llm | file:<names.json> | none"


def check_namer(namer: str, llm_base_url: str | None, llm_model: str | None, llm_local_model: str | None) -> None:
    """Refuse a --namer value (and its LLM settings) that cannot work, before anything is loaded."""
    if namer.startswith("file:"):
        if not Path(namer[5:]).is_file():
            raise SirenError(f"--namer {namer}: {namer[5:]} does not exist")
    elif namer == "llm":
        if llm_local_model is None and (llm_base_url is None or llm_model is None):
            raise SirenError("--namer llm needs --llm_base_url and --llm_model, or --llm_local_model")
        if llm_local_model is not None and not Path(llm_local_model).is_dir():
            raise SirenError(f"--llm_local_model {llm_local_model} is not a folder")
    elif namer not in ("keywords", "none"):
        raise SirenError(f"unknown --namer {namer!r}; expected {NAMERS_HELP}")


def name_topics(
    namer: str,
    assignment: np.ndarray,
    items: ItemTable,
    k: int,
    exemplars: dict[int, list[dict]],
    noun: str,
    *,
    llm_base_url: str | None = None,
    llm_model: str | None = None,
    llm_api_key: str | None = None,
    llm_local_model: str | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
) -> tuple[list[str], dict]:
    """(the K topic names, a report for sketch_stats.json) for a --namer value.

    The LLM namer starts from the keyword names: they stand in for unusable replies and tell
    repeated themes apart.
    """
    report: dict = {"namer": namer}
    if namer == "none":
        return placeholder_names(k), report
    if namer.startswith("file:"):
        return names_from_file(namer[5:], k), report
    names = keyword_topic_names(assignment, items, k)
    if namer != "llm":
        return names, report
    from siren.llm_chat import local_hf_chat, openai_chat

    ask = local_hf_chat(llm_local_model, device) if llm_local_model else openai_chat(llm_base_url, llm_model, llm_api_key)
    llm = llm_topic_names(exemplars, noun, ask, fallback=names)
    report.update(
        llm=llm_local_model or f"{llm_model} @ {llm_base_url}",
        invalid_reply_clusters=llm.invalid_clusters, disambiguated_clusters=llm.disambiguated_clusters,
        replies=llm.replies,
    )
    if llm.invalid_clusters:
        log(f"warning: the LLM gave no usable theme for cluster(s) {llm.invalid_clusters} (empty, all thinking, "
            "or holding a tag); their keyword names are used (listed in sketch_stats.json)")
    return llm.names, report
