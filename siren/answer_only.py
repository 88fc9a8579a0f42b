"""Stage 6, answer-only (AO) inference: the model reads prompt + empty think + `<answer>` and the
next token is the rating.

Two decodings of that one next-token distribution:
  constrained  argmax over the tokens "1".."5" (ids from the tokenizer); cannot be invalid.
  greedy       argmax over the whole vocabulary, decoded and parsed (the authors' way); a token that
               is not a rating 1-5 is invalid and counted.
Both also give the expected rating sum_r p(r) * r, with p the next-token distribution renormalised
over the five rating tokens.

The forward pass is one of `siren.answer_only_engines` (eager, compiled, vllm). `ao_batches` sorts the rows
by prompt length and forms the batches once for every process count; `predict` runs an engine over
a process's batches after its warm-up (compilation, its shortest batch) and times it; `gather_predictions`
brings the processes' rows back in dataset order; `ao_metrics` scores them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from siren import SirenError
from siren.answer import RATING_MAX, RATING_MIN, parse_rating
from siren.modeling import model_label

if TYPE_CHECKING:
    import torch

DECODES = ("constrained", "greedy")

# How far a row's rating probabilities (and expected rating) may move when it is batched with other
# rows, or with another engine: a batch is left-padded to its longest prompt (or, compiled, to its
# length bucket), and the padded width changes the order of the floating-point sums in attention.
# Measured: up to 4.8e-7 (float32, CPU); the decoded ratings are the same. The batches themselves do
# not depend on the process count (`ao_batches`), so 1 and K processes give the same numbers.
BATCHING_TOLERANCE = 1e-5


def parse_greedy_token(text: str) -> float | None:
    """The rating a one-token greedy answer stands for, or None (not a number, or outside 1-5)."""
    rating = parse_rating(text)
    if rating is None or not RATING_MIN <= rating <= RATING_MAX:
        return None
    return rating


# --------------------------------------------------------------------------------------------------
# Model


def check_adapter_base(adapter_dir: str | os.PathLike, model_path: str | os.PathLike) -> str | None:
    """Refuse an adapter whose recorded base (adapter/base_model.json, written by stage 5) is another
    model than `model_path`: other architecture, or same shapes but other weights (the weights digest).
    Returns a note when the record cannot say (no file, or an older one without the digest)."""
    from siren.io import read_json
    from siren.modeling import ADAPTER_BASE_NAME, MANIFEST_MODEL_KEY, check_same_model, model_record

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SirenError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json)")
    record_path = adapter_dir / ADAPTER_BASE_NAME
    recorded = read_json(record_path) if record_path.is_file() else None
    base = recorded.get(MANIFEST_MODEL_KEY) if isinstance(recorded, dict) else None
    if not isinstance(base, dict) or not base.get("weights_digest"):
        return (f"note: adapter {adapter_dir} does not record its base's weights (an older train_hidden_mask.py?); "
                "the base is checked by its shapes only")
    check_same_model(base, model_record(model_path), what=f"adapter {adapter_dir} was trained on", parts=("weights_digest",))
    return None


def check_adapter_matches(base_model, adapter_dir: str | os.PathLike) -> None:
    """Refuse an adapter trained on another base: recorded fingerprint and every LoRA weight's shape."""
    from safetensors import safe_open

    from siren.modeling import ADAPTER_BASE_NAME, base_fingerprint

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise SirenError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json)")
    fingerprint_path = adapter_dir / ADAPTER_BASE_NAME
    if fingerprint_path.is_file():
        from siren.io import read_json

        recorded = read_json(fingerprint_path)
        actual = base_fingerprint(base_model.config)
        differing = [k for k in actual if k in recorded and recorded[k] != actual[k]]
        if differing:
            key = differing[0]
            raise SirenError(
                f"adapter {adapter_dir} was trained on a different base model: {key} {recorded[key]} in the "
                f"adapter's base, {actual.get(key)} in this model"
            )
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    modules = dict(base_model.named_modules())
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
            module = modules.get(module_name)
            if module is None:
                raise SirenError(f"adapter {adapter_dir} has weights for {module_name}, which this base model lacks")
            shape = handle.get_slice(key).get_shape()
            in_features, out_features = getattr(module, "in_features", None), getattr(module, "out_features", None)
            expected = shape[1] if ".lora_A." in key else shape[0]
            actual = in_features if ".lora_A." in key else out_features
            if expected != actual:
                raise SirenError(
                    f"adapter {adapter_dir} does not fit this base model: {module_name} has "
                    f"{'in' if '.lora_A.' in key else 'out'}_features {actual} here but {expected} in the adapter"
                )


def check_prompt_tokenizer(data_path: str | os.PathLike, model_path: str | os.PathLike) -> str | None:
    """A stage-4c DatasetDict holds prompts rendered by a tokenizer: refuse one built with another
    tokenizer than `model_path`'s (4c's manifest). A parquet folder's prompts are rendered here, by
    `model_path`'s own tokenizer. Returns a note when 4c's manifest cannot say."""
    from siren.answer_only_data import is_ao_dataset
    from siren.modeling import check_upstream_model, model_record

    if not is_ao_dataset(data_path):
        return None
    return check_upstream_model(data_path, model_record(model_path), parts=("tokenizer",), made_by="preprocess_hidden.py",
                                what=f"the answer-only prompts in {data_path} were built with the tokenizer of")


def load_ao_model(model_path: str | os.PathLike, adapter_path: str | os.PathLike | None, dtype: torch.dtype, device):
    """A causal LM ready for AO inference: a merged model, or a base with a LoRA adapter merged in."""
    from siren.modeling import load_causal_lm

    model = load_causal_lm(model_path, dtype, device)
    if adapter_path is not None:
        from peft import PeftModel

        check_adapter_matches(model, adapter_path)
        model = PeftModel.from_pretrained(model, str(adapter_path)).merge_and_unload().eval()
    return model


def default_out_dir(model_path, adapter_path, split: str, decode: str) -> Path:
    """`results_ao/<model>/<split>-<decode>`: the path says which model, split and decoding made it."""
    return Path("results_ao") / model_label(model_path, adapter_path) / f"{split}-{decode}"


def prediction_metrics(predictions, expected, labels, invalid_fill: float | None = None) -> dict:
    """metrics.json's "predictions": `ao` (decoded ratings; None = invalid) and `ao_expected`."""
    from siren.metrics import rating_metrics

    return {
        "ao": rating_metrics(predictions, labels, invalid_fill=invalid_fill),
        "ao_expected": rating_metrics(expected, labels),
    }


# --------------------------------------------------------------------------------------------------
# Batched inference over a process's rows


def ao_batches(tokenizer, rows: Sequence[dict], batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's batches of row positions: every row sorted by prompt length (longest first,
    so little padding and an out-of-memory batch shows at once), cut into batches of `batch_size`,
    batch b going to process b % world. The batches are the same for any process count, so a row is
    always scored with the same batch-mates and padding."""
    from siren.distributed import longest_first_batches

    lengths = [len(ids) for ids in tokenizer([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]]
    return [batch for _number, batch in longest_first_batches(lengths, batch_size, rank, world)]


def predict(engine, tokenizer, rows: Sequence[dict], batches: Sequence[Sequence[int]], *, decode: str, device,
            show_progress: bool = True) -> tuple[list[dict], float, float]:
    """Score `rows[p]` batch by batch with an AO engine (`siren.answer_only_engines`).

    Warm-up first, untimed: the engine's `prepare` (the compiled engine compiles every shape these
    rows need) and the last batch, which holds the shortest prompts (kernel selection, allocator:
    the cheapest full pass; the longest batch cost a sixth of a 200-row run on a CPU). Returns
    (one result per row with its `position` and `seconds`, the batch time shared by its rows; the
    timed loop's wall seconds; the warm-up seconds).
    """
    import torch
    from tqdm.auto import tqdm

    from siren.modeling import constrained_ratings, expected_ratings

    if decode not in DECODES:
        raise SirenError(f"unknown decode {decode!r}; expected one of {', '.join(DECODES)}")
    scale = sorted(engine.rating_token_ids)

    def run_batch(batch: Sequence[int]) -> list[dict]:
        scores = engine.score([rows[p]["prompt"] for p in batch])
        probs = scores.rating_probs
        expected = expected_ratings(probs, scale).tolist()
        if decode == "constrained":
            predictions, texts = constrained_ratings(probs, scale).tolist(), [None] * len(batch)
        else:
            if scores.greedy_ids is None:
                raise SirenError(f"--decode greedy needs the whole vocabulary, which the {engine.name} engine "
                                 "does not return; use --engine eager or compiled")
            texts = tokenizer.batch_decode(scores.greedy_ids[:, None], skip_special_tokens=False)
            predictions = [parse_greedy_token(text) for text in texts]
        results = []
        for p, prediction, expectation, row_probs, text in zip(batch, predictions, expected, probs.tolist(), texts,
                                                               strict=True):
            row = rows[p]
            result = {
                "position": p, "index": row["index"], "user_id": row["user_id"], "parent_asin": row["parent_asin"],
                "label": row["label"], "prediction": prediction, "expected_rating": expectation,
                "probs": {str(r): prob for r, prob in zip(scale, row_probs, strict=True)}, "valid": prediction is not None,
            }
            if decode == "greedy":
                result["generated_text"] = text
            results.append(result)
        return results

    def synchronize() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    warmup_start = time.perf_counter()
    engine.prepare([rows[p]["prompt"] for batch in batches for p in batch])
    if batches:
        run_batch(batches[-1])
    synchronize()
    warmup_seconds = time.perf_counter() - warmup_start
    start = time.perf_counter()
    results = []
    for batch in tqdm(batches, desc=f"AO {decode} ({engine.name})", disable=not show_progress):
        batch_start = time.perf_counter()
        batch_results = run_batch(batch)
        synchronize()
        for result in batch_results:
            result["seconds"] = (time.perf_counter() - batch_start) / len(batch)
        results.extend(batch_results)
    return results, time.perf_counter() - start, warmup_seconds


def gather_predictions(state, results: list[dict], seconds: float, n_rows: int) -> tuple[list[dict], list[float]] | None:
    """Every process's results on the main process, in dataset order (None elsewhere), and each
    process's timed seconds."""
    from accelerate.utils import gather_object

    if state.num_processes > 1:
        results, all_seconds = gather_object(results), gather_object([seconds])
    else:
        all_seconds = [seconds]
    if not state.is_main_process:
        return None
    results = sorted(results, key=lambda r: r.pop("position"))
    if len(results) != n_rows:
        raise SirenError(f"internal error: gathered {len(results)} results for {n_rows} rows")
    return results, all_seconds


def ao_metrics(results: list[dict], *, decode: str, invalid_fill: float | None, device: str, num_processes: int,
               batch_size: int, dtype: str, process_seconds: list[float], engine: dict | None = None,
               warmup_seconds: float | None = None) -> dict:
    """metrics.json: the two prediction rows, the decoding and the latency (the per-row `seconds`
    are taken out of `results`).

    Latency is per process, as stage 4a reports it: ms_per_sample = batch time / batch size, timed
    after the warm-up (reported apart); with K processes the whole split takes about wall_seconds.
    `engine` is the engine's report (name, and for the compiled engine its buckets, compiled shapes
    and the rows that fell back to eager).
    """
    from siren.metrics import latency_summary

    row_seconds = [r.pop("seconds") for r in results]
    return {
        "predictions": prediction_metrics([r["prediction"] for r in results], [r["expected_rating"] for r in results],
                                          [r["label"] for r in results],
                                          invalid_fill=invalid_fill if decode == "greedy" else None),
        "decode": decode,
        "latency": {
            **latency_summary(row_seconds, [1] * len(results), device, engine=(engine or {}).get("engine", "eager"),
                              batch_size=batch_size, dtype=dtype,
                              warmup_seconds=None if warmup_seconds is None else round(warmup_seconds, 3)),
            "num_processes": num_processes, "wall_seconds": max(process_seconds),
        },
        "engine": engine or {"engine": "eager"},
    }
