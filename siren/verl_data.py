"""The verl parquet schema (SPEC §2): building rows and reading a parquet directory back.

Stage 2 writes it; stages 4a/4b/4c read it. `extra_info.index` is the row's position in its
parquet file, the key every later stage uses to line rows up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from siren import SirenError
from siren.prompts import build_messages, chat_prompt_text
from siren.tokenization import count_tokens

# Split name (siren.data.SPLITS) -> parquet file stem: verl's examples call the validation split "val".
# This is the only place that mapping is written.
PARQUET_SPLITS = {"train": "train", "valid": "val", "test": "test"}
ABILITY = "rating_prediction"


def data_source(category: str) -> str:
    return f"AmazonReviews/{category}"


VERL_DIR_PATTERN = re.compile(r"max@(\d+)-long@(True|False)")


def verl_dir_name(max_history: int, use_long_history: bool) -> str:
    """`max@{N}-long@{True|False}`: the output folder name says what made the files."""
    return f"max@{max_history}-long@{bool(use_long_history)}"


def parse_verl_dir_name(name: str) -> tuple[int, bool] | None:
    """(max_history, use_long_history) of a `max@{N}-long@{True|False}` folder name, else None."""
    match = VERL_DIR_PATTERN.fullmatch(name)
    return (int(match.group(1)), match.group(2) == "True") if match else None


def make_row(record: dict, *, category: str, split: str, index: int, sketch: str = "", max_history: int = 10) -> dict:
    """One verl row from one split record (see data/README.md)."""
    return {
        "data_source": data_source(category),
        "prompt": build_messages(category, record["history"], record["target"], sketch, max_history),
        "ability": ABILITY,
        "reward_model": {"style": "rule", "ground_truth": f"{float(record['label']):.1f}"},
        "extra_info": {
            "split": split,
            "index": index,
            "user_id": record["user_id"],
            "parent_asin": record["parent_asin"],
        },
    }


def parquet_path(parquet_dir: str | os.PathLike, split: str) -> Path:
    """Path of a split's parquet; `split` is train, valid (or val) or test."""
    from siren.data import canonical_split

    return Path(parquet_dir) / f"{PARQUET_SPLITS[canonical_split(split)]}.parquet"


def read_parquet_frame(path: Path):
    """pandas.read_parquet, with a file that is not (valid) parquet as a one-line SirenError."""
    import pandas as pd
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as err:
        # pyarrow repeats the path ("Could not open Parquet input source '<path>': ..."); keep the reason.
        reason = " ".join(str(err).split()).split(f"{path}': ", 1)[-1]
        raise SirenError(f"{path}: not a readable parquet file ({reason})") from None


def load_split_rows(parquet_dir: str | os.PathLike, split: str, limit: int | None = None) -> list[dict]:
    """Read a verl parquet split as a list of row dicts, checking the schema and row order."""
    path = parquet_path(parquet_dir, split)
    if not path.is_file():
        raise SirenError(f"missing parquet split: {path} (run preprocess_grpo.py first)")
    frame = read_parquet_frame(path)
    missing = [c for c in ("data_source", "prompt", "reward_model", "extra_info") if c not in frame.columns]
    if missing:
        raise SirenError(f"{path}: missing column(s) {', '.join(missing)}")
    if len(frame) == 0:
        raise SirenError(f"{path}: the split is empty")
    if limit is not None:
        frame = frame.iloc[:limit]
    rows = []
    for position, row in enumerate(frame.to_dict("records")):
        info = row["extra_info"]
        if int(info["index"]) != position:
            raise SirenError(f"{path}: row {position} has extra_info.index {info['index']}; rows must be in index order")
        row["prompt"] = [dict(m) for m in row["prompt"]]
        row["label"] = float(row["reward_model"]["ground_truth"])
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Stage 2 (preprocess_grpo.py): sketches, the parquet rows of a split, prompt-token statistics.
# --------------------------------------------------------------------------------------------

# Prompt variants compared in prompt_stats.json (the paper's token-efficiency table), with their
# table labels, in table order: raw history first, since the reductions are measured against it.
RAW_VARIANT = "raw_history"
PROMPT_VARIANTS = {
    "raw_history": "Raw history (every interaction)",       # every history line, no sketch
    "recent_only": "Recent N only",                         # the N most recent lines, no sketch
    "sketch_recent": "Sketch + recent N (SIREN)",           # the sketch + the N most recent lines
    "as_built": "As built (this run's parquet)",            # the prompt stored in the parquet
}


def default_verl_dir(category: str, max_history: int, use_long_history: bool) -> Path:
    """`data/{category}/verl/max@{N}-long@{bool}` (relative to the working directory)."""
    return Path("data") / category / "verl" / verl_dir_name(max_history, use_long_history)


def load_sketches(path: str | os.PathLike) -> dict[str, str]:
    """{user_id: sketch text} from stage 1's user_feature.jsonl (`user_id`, `user_profile_prompt`)."""
    from siren.data import iter_jsonl, require_file

    path = require_file(path, "sketch file")
    sketches: dict[str, str] = {}
    for lineno, record in iter_jsonl(path):
        missing = [f for f in ("user_id", "user_profile_prompt") if f not in record]
        if missing:
            raise SirenError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        text = record["user_profile_prompt"]
        if not isinstance(text, str):
            raise SirenError(f"{path}:{lineno}: user_profile_prompt must be a string")
        sketches[str(record["user_id"])] = text.strip()
    if not sketches:
        raise SirenError(f"{path}: the sketch file is empty")
    return sketches


def build_split_rows(
    records: list[dict],
    *,
    category: str,
    split: str,
    sketches: dict[str, str],
    max_history: int,
    use_long_history: bool,
) -> list[dict]:
    """The parquet rows of one split, in source order; the sketch is used only with use_long_history."""
    return [
        make_row(
            record,
            category=category,
            split=split,
            index=index,
            sketch=sketches.get(record["user_id"], "") if use_long_history else "",
            max_history=max_history,
        )
        for index, record in enumerate(records)
    ]


def variant_messages(rows: list[dict], records: list[dict], *, category: str, sketches: dict[str, str],
                     max_history: int) -> dict[str, list[list[dict]]]:
    """The chat prompt of every row under each of PROMPT_VARIANTS (as_built is the stored prompt)."""
    variants: dict[str, list[list[dict]]] = {"as_built": [row["prompt"] for row in rows]}
    settings = {"recent_only": (False, max_history), "sketch_recent": (True, max_history), "raw_history": (False, None)}
    for name, (with_sketch, history_limit) in settings.items():
        variants[name] = [
            build_messages(
                category, record["history"], record["target"],
                sketches.get(record["user_id"], "") if with_sketch else "", history_limit,
            )
            for record in records
        ]
    return variants


def load_counting_tokenizer(path: str | os.PathLike):
    """A tokenizer for counting prompt tokens, loaded the quick way when the folder has tokenizer.json.

    AutoTokenizer imports transformers' model registry (about 10 s on 2 cores); the fast-tokenizer
    class reads the same tokenizer.json and chat template, so the counts are the same.
    """
    from siren.tokenization import load_tokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        return load_tokenizer(path)
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise SirenError(f"cannot load a tokenizer from {path}: {str(err).splitlines()[0]}") from None
    if not getattr(tokenizer, "chat_template", None):
        raise SirenError(f"the tokenizer in {path} has no chat template; SIREN prompts need one")
    return tokenizer


class PromptTokenCounter:
    """Exact token counts of chat-templated prompts (system + user, generation prompt added), fast.

    Tokenizing 4 variants of 27k prompts whole (Movies train raw-history prompts average ~1,000
    tokens) takes about a minute on 2 cores, but
    the prompts are built from a few tens of thousands of distinct lines, and those from far fewer
    distinct titles and category strings. Added tokens (`<|im_start|>` ...) split the text before
    pre-tokenization, and a byte-level BPE pre-token (Qwen, GPT-style regex) neither continues past a
    run of newlines nor runs from a comma into the space after it. So a prompt's count is the sum
    of the counts of its "line + trailing newlines" chunks, and a chunk's count the sum over its
    pieces split after ", "; each piece is tokenized once and cached. `verify` checks that claim
    against whole-text tokenization; if it fails for a tokenizer, every prompt is tokenized whole.
    """

    _CHUNK = re.compile(r"[^\n]*\n+|[^\n]+")
    _PIECE_BOUNDARY = re.compile(r"(?<=,)(?= )")
    _SENTINEL = "\x00SIREN-USER\x00"

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.chunk_counts: dict[str, int] = {}
        self.piece_counts: dict[str, int] = {}
        self.whole_text = False  # set when chunked counting disagreed with the tokenizer
        self._frames: dict[str, tuple[str, str] | None] = {}

    def _frame(self, system: str) -> tuple[str, str] | None:
        """The templated text around the user message, for a given system message (rendered once)."""
        if system not in self._frames:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": self._SENTINEL}]
            rendered = chat_prompt_text(self.tokenizer, messages)
            head, sep, tail = rendered.partition(self._SENTINEL)
            self._frames[system] = (head, tail) if sep and self._SENTINEL not in tail else None
        return self._frames[system]

    def render(self, messages: list[dict]) -> str:
        if len(messages) == 2 and messages[0]["role"] == "system" and messages[1]["role"] == "user":
            frame = self._frame(messages[0]["content"])
            if frame is not None:
                return frame[0] + messages[1]["content"] + frame[1]
        return chat_prompt_text(self.tokenizer, messages)

    def _count_whole(self, texts: list[str]) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # Same ids as tokenizer(texts, add_special_tokens=False) without building offsets and masks.
            return [len(encoding.ids) for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return count_tokens(self.tokenizer, texts)

    def count_texts(self, texts: list[str]) -> np.ndarray:
        if self.whole_text:
            return np.asarray(self._count_whole(texts), dtype=np.int64)
        chunked = [self._CHUNK.findall(text) for text in texts]
        new_chunks = list({chunk for chunks in chunked for chunk in chunks if chunk not in self.chunk_counts})
        pieces_of = [self._PIECE_BOUNDARY.split(chunk) for chunk in new_chunks]
        new_pieces = list({piece for pieces in pieces_of for piece in pieces if piece not in self.piece_counts})
        self.piece_counts.update(zip(new_pieces, self._count_whole(new_pieces), strict=True))
        piece_counts = self.piece_counts
        self.chunk_counts.update(
            (chunk, sum(piece_counts[p] for p in pieces)) for chunk, pieces in zip(new_chunks, pieces_of, strict=True)
        )
        lookup = self.chunk_counts
        return np.fromiter((sum(lookup[c] for c in chunks) for chunks in chunked), dtype=np.int64, count=len(texts))

    def count(self, prompts: list[list[dict]]) -> np.ndarray:
        return self.count_texts([self.render(messages) for messages in prompts])

    def verify(self, prompts: list[list[dict]], sample_size: int = 24) -> bool:
        """Compare fast counts with whole-text tokenization of chat_prompt_text on a spread sample.

        On disagreement switch to whole-text counting for good and return False.
        """
        if self.whole_text or not prompts:
            return not self.whole_text
        picks = sorted(set(np.linspace(0, len(prompts) - 1, num=min(sample_size, len(prompts))).astype(int).tolist()))
        exact_texts = [chat_prompt_text(self.tokenizer, prompts[i]) for i in picks]
        exact = count_tokens(self.tokenizer, exact_texts)
        fast = self.count([prompts[i] for i in picks]).tolist()
        if exact != fast:
            self.whole_text = True
        return not self.whole_text


def token_summary(counts: np.ndarray) -> dict:
    """{"n", "mean", "p50", "p95", "max"} of a token-count array (as in prompt_stats.json)."""
    if len(counts) == 0:
        return {"n": 0, "mean": None, "p50": None, "p95": None, "max": None}
    return {
        "n": int(len(counts)),
        "mean": round(float(np.mean(counts)), 2),
        "p50": round(float(np.percentile(counts, 50)), 2),
        "p95": round(float(np.percentile(counts, 95)), 2),
        "max": int(np.max(counts)),
    }


def category_of(rows: Sequence[dict], override: str | None = None) -> str:
    """The category of parquet rows: `override` if given, else from `data_source` ("AmazonReviews/<Category>")."""
    if override:
        return override
    sources = {str(row["data_source"]) for row in rows}
    if len(sources) != 1:
        raise SirenError(f"rows come from {len(sources)} data sources ({', '.join(sorted(sources)[:3])}); pass --category")
    prefix, sep, category = sources.pop().partition("/")
    if not sep or not category or prefix + sep != data_source(""):
        raise SirenError(f"cannot read a category from data_source {prefix + sep + category!r}; pass --category")
    return category
