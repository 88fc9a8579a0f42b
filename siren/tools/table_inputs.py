"""The input files of a run's tables: where each lies in a run directory, what it must hold, and
reading them with one-line refusals (`load_inputs`).

A run directory (what `make demo` writes under results/<run>/) holds (`INPUTS`):

  baselines/metrics.json     scripts/baselines.py: {"methods": {name: {"label", "metrics", "n_fallback"}}}
  prompt_stats.json          stage 2: {"splits": {split: {variant: {"n", "mean", "p50", "p95", "max"}}}}
  prompt_tokens_test.npz     stage 2 (optional): one int array of per-row prompt tokens per variant
  cot_test/metrics.json      stage 4a --split test: {"predictions": {"cot": metrics}, "latency": {...}}
  ao_before/metrics.json     stage 6 on the GRPO model: {"predictions": {"ao", "ao_expected"}, "latency"}
  ao_after/metrics.json      stage 6 on the aligned model: same keys
  bench_latency/latency.json scripts/bench_latency.py (optional): {"rows": [latency, ...], "cot", "ao"}
  ao_zero_shot/metrics.json  stage 6 on the untouched base model (zero-shot answer-only)
  ao_warm/metrics.json       stage 6 on the format warm start
  ao_ce_only/metrics.json    stage 6 after stage 5 with the cross-entropy term alone (the "w/o HA" ablation)
  grpo_train_log.jsonl       stage 3 (TRL): its train_log.jsonl, the GRPO learning curve
  alignment_train_log.jsonl  stage 5: its train_log.jsonl, the alignment learning curve
  alignment_ce_only_train_log.jsonl  stage 5 of the ablation: its train_log.jsonl
  timings.json               the demo: {"steps": [{"step", "seconds"}, ...], "total_seconds"}

Every input is optional: a missing one gives rows that say "not run" instead of numbers. A file
that is there but is not that input's kind (no "predictions" in a stage-6 metrics.json, stage 4a's
metrics given as --ao_before, ...) is refused with one line naming the file and the key.
A new input is one InputSpec in INPUTS (and a field of RunInputs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from siren import SirenError

# (row label, input key, key under "predictions") for the LLM rows of the accuracy table, in the
# order a model goes through the pipeline.
LLM_ROWS = (
    ("Untouched model, answer-only zero-shot (constrained)", "ao_zero_shot", "ao"),
    ("Untouched model, answer-only zero-shot (probability-weighted)", "ao_zero_shot", "ao_expected"),
    ("After the format warm start, answer-only (constrained)", "ao_warm", "ao"),
    ("After the format warm start, answer-only (probability-weighted)", "ao_warm", "ao_expected"),
    ("GRPO, CoT decoding (invalid rows left out)", "cot_test", "cot"),
    ("GRPO, CoT decoding (invalid rows scored 5.0, as the authors did)", "cot_test", "cot_invalid_as_5"),
    ("GRPO, answer-only before alignment (constrained)", "ao_before", "ao"),
    ("GRPO, answer-only before alignment (probability-weighted)", "ao_before", "ao_expected"),
    ("SIREN-AO: after hidden-state alignment (constrained)", "ao_after", "ao"),
    ("SIREN-AO: after hidden-state alignment (probability-weighted)", "ao_after", "ao_expected"),
    ("w/o HA: stage 5 with the cross-entropy term alone (constrained)", "ao_ce_only", "ao"),
    ("w/o HA: stage 5 with the cross-entropy term alone (probability-weighted)", "ao_ce_only", "ao_expected"),
)
# The inputs of LLM_ROWS and the split and kind each must have been run on (checked against the
# manifest.json beside the metrics, where there is one).
PREDICTION_INPUTS = ("ao_zero_shot", "ao_warm", "cot_test", "ao_before", "ao_after", "ao_ce_only")


@dataclass(frozen=True)
class InputSpec:
    """One input of the tables: where it lies in a run directory, who writes it, what it must hold."""

    key: str                                   # RunInputs field and make_tables.py flag
    relative_path: str                         # under the run directory
    what: str                                  # the file's kind, for messages
    required: tuple[str, ...] = ()             # top-level keys that must hold JSON objects
    kind: str = "json"                         # json (an object), jsonl (a log) or npz


INPUTS = (
    InputSpec("baselines", "baselines/metrics.json", "scripts/baselines.py's metrics.json", ("methods",)),
    InputSpec("prompt_stats", "prompt_stats.json", "stage 2's prompt_stats.json (preprocess_grpo.py --tokenizer)",
              ("splits",)),
    InputSpec("prompt_tokens", "prompt_tokens_test.npz", "stage 2's prompt_tokens_test.npz", kind="npz"),
    InputSpec("cot_test", "cot_test/metrics.json", "stage 4a's metrics.json (inference_train_ddp.py)",
              ("predictions", "latency")),
    InputSpec("ao_before", "ao_before/metrics.json", "stage 6's metrics.json (inference_ao_ddp.py)",
              ("predictions", "latency")),
    InputSpec("ao_after", "ao_after/metrics.json", "stage 6's metrics.json (inference_ao_ddp.py)",
              ("predictions", "latency")),
    InputSpec("bench_latency", "bench_latency/latency.json", "scripts/bench_latency.py's latency.json", ("cot",)),
    InputSpec("ao_zero_shot", "ao_zero_shot/metrics.json", "stage 6's metrics.json (inference_ao_ddp.py)",
              ("predictions", "latency")),
    InputSpec("ao_warm", "ao_warm/metrics.json", "stage 6's metrics.json (inference_ao_ddp.py)",
              ("predictions", "latency")),
    InputSpec("ao_ce_only", "ao_ce_only/metrics.json", "stage 6's metrics.json (inference_ao_ddp.py)",
              ("predictions", "latency")),
    InputSpec("grpo_log", "grpo_train_log.jsonl", "stage 3's train_log.jsonl (TRL backend)", kind="jsonl"),
    InputSpec("alignment_log", "alignment_train_log.jsonl", "stage 5's train_log.jsonl", kind="jsonl"),
    InputSpec("alignment_ce_log", "alignment_ce_only_train_log.jsonl", "stage 5's train_log.jsonl", kind="jsonl"),
    InputSpec("timings", "timings.json", "the demo's timings.json"),  # steps: a list, checked in timing_rows
)
INPUT_SPECS = {spec.key: spec for spec in INPUTS}


@dataclass
class RunInputs:
    """Paths of a run's input files (one per INPUTS entry); `default(run_dir)` gives the documented layout."""

    baselines: Path
    prompt_stats: Path
    prompt_tokens: Path
    cot_test: Path
    ao_before: Path
    ao_after: Path
    bench_latency: Path
    ao_zero_shot: Path
    ao_warm: Path
    ao_ce_only: Path
    grpo_log: Path
    alignment_log: Path
    alignment_ce_log: Path
    timings: Path

    @classmethod
    def default(cls, run_dir: str | os.PathLike) -> RunInputs:
        return cls(**{spec.key: Path(run_dir) / spec.relative_path for spec in INPUTS})

    def as_dict(self) -> dict[str, Path]:
        return dict(vars(self))


def read_json_object_if_present(path: Path) -> dict | None:
    """A JSON object from `path`; None when the file does not exist; SirenError when it is broken."""
    if not path.is_file():
        return None
    from siren.io import read_json as read_json_value

    data = read_json_value(path)
    if not isinstance(data, dict):
        raise SirenError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _prediction_keys(key: str) -> set[str]:
    """The keys under "predictions" that the accuracy table reads from input `key`."""
    return {prediction for _label, source, prediction in LLM_ROWS if source == key}


def check_input(key: str, path: Path, data: dict) -> dict:
    """Refuse a file that is not input `key`'s kind: one line naming the file and the key."""
    spec = INPUT_SPECS[key]
    for name in spec.required:
        if name not in data:
            raise SirenError(f"{path} is not {spec.what}: it has no {name!r} key (given as --{key})")
        if not isinstance(data[name], dict):
            raise SirenError(f"{path} is not {spec.what}: {name!r} holds {type(data[name]).__name__}, "
                             f"not an object (given as --{key})")
    predictions = data.get("predictions")
    if isinstance(predictions, dict) and predictions:
        # Keys the table reads from another input (e.g. stage 4a's "cot" in a file given as --ao_before).
        other_inputs = {p for k in INPUT_SPECS if k != key for p in _prediction_keys(k)} - _prediction_keys(key)
        foreign = sorted(set(predictions) & other_inputs)
        if foreign:
            raise SirenError(f"{path} is not {spec.what}: its predictions hold {', '.join(foreign)}, not "
                             f"{' or '.join(sorted(_prediction_keys(key)))} (given as --{key})")
    return data


# The script that writes each prediction input, as its manifest.json names it.
_PREDICTION_SCRIPTS = {key: "inference_ao_ddp.py" for key in PREDICTION_INPUTS} | {"cot_test": "inference_train_ddp.py"}


def check_prediction_manifest(key: str, path: Path) -> None:
    """The manifest.json beside a prediction input must say it is that input's kind and a test-split
    run: a valid-split stage-6 run or a train-split 4a run is not an accuracy row on test."""
    from siren.manifest import check_input_manifest

    check_input_manifest(path, made_by=_PREDICTION_SCRIPTS[key], flag=f"--{key}",
                         expect={"split": ("test", "an accuracy row on test")})


def read_log(path: Path, key: str) -> list[dict] | None:
    """A train_log.jsonl as a list of objects; None when the file does not exist."""
    if not path.is_file():
        return None
    from siren.io import iter_jsonl

    entries = []
    for lineno, entry in iter_jsonl(path):
        if not isinstance(entry, dict):
            raise SirenError(f"{path}:{lineno}: expected a JSON object per line (given as --{key})")
        entries.append(entry)
    return entries


def load_inputs(inputs: RunInputs) -> dict[str, dict | list | None]:
    """Every JSON input of the run, checked against its kind; None for a file that is not there."""
    loaded = {}
    for spec in INPUTS:
        path = getattr(inputs, spec.key)
        if spec.kind == "jsonl":
            loaded[spec.key] = read_log(path, spec.key)
            continue
        if spec.kind != "json":
            continue
        data = read_json_object_if_present(path)
        loaded[spec.key] = None if data is None else check_input(spec.key, path, data)
        if data is not None and spec.key in PREDICTION_INPUTS:
            check_prediction_manifest(spec.key, path)
    return loaded

def load_token_counts(path: Path) -> dict[str, list[int]] | None:
    """Per-row prompt-token counts per variant from the optional npz; None when absent."""
    if not path.is_file():
        return None
    import numpy as np

    try:
        with np.load(path) as archive:
            return {name: archive[name].astype(int).tolist() for name in archive.files}
    except (OSError, ValueError) as err:
        raise SirenError(f"{path}: cannot read ({err})") from None

