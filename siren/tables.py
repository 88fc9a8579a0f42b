"""Paper-style tables of one run: accuracy, token efficiency and latency, plus one figure.

A run directory (what `make demo` writes under results/<run>/) holds (`INPUTS`):

  baselines/metrics.json     scripts/baselines.py: {"methods": {name: {"label", "metrics", "n_fallback"}}}
  prompt_stats.json          stage 2: {"splits": {split: {variant: {"n", "mean", "p50", "p95", "max"}}}}
  prompt_tokens_test.npz     stage 2 (optional): one int array of per-row prompt tokens per variant
  cot_test/metrics.json      stage 4a --split test: {"predictions": {"cot": metrics}, "latency": {...}}
  ao_before/metrics.json     stage 6 on the GRPO model: {"predictions": {"ao", "ao_expected"}, "latency"}
  ao_after/metrics.json      stage 6 on the aligned model: same keys
  bench_latency/latency.json scripts/bench_latency.py (optional): {"rows": [latency, ...], "cot", "ao"}

`metrics` dicts come from siren.metrics.rating_metrics; `latency` dicts come from
siren.metrics.latency_summary: "ms_per_sample", "samples_per_s", "generated_tokens_per_sample",
"ms_per_token", "device", "n", and how they were measured: "engine", "batch_size", "dtype" (and
"warmup_seconds", never inside the timed figures). The latency table's speedup compares an
answer-only row with a CoT row only when both were measured the same way (same batch size,
device and dtype); otherwise it stays empty and a note says why. Every input is optional: a
missing one gives rows that say "not run" instead of numbers. A file that is there but is not
that input's kind (no "predictions" in a stage-6 metrics.json, stage 4a's metrics given as
--ao_before, ...) is refused with one line naming the file and the key (`load_inputs`).

To add a row: an accuracy row is one entry of LLM_ROWS (input, key under "predictions"), a latency
row one entry of LATENCY_ROWS; a new input is one InputSpec in INPUTS (and a field of RunInputs).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from siren import SirenError
from siren.baselines import METHOD_LABELS, METHODS
from siren.verl_data import PROMPT_VARIANTS, RAW_VARIANT

NOT_RUN = "not run"

# (row label, input key, key under "predictions") for the LLM rows of the accuracy table.
LLM_ROWS = (
    ("GRPO, CoT decoding (invalid rows left out)", "cot_test", "cot"),
    ("GRPO, CoT decoding (invalid rows scored 5.0, as the authors did)", "cot_test", "cot_invalid_as_5"),
    ("Answer-only before alignment (constrained)", "ao_before", "ao"),
    ("Answer-only before alignment (probability-weighted)", "ao_before", "ao_expected"),
    ("Answer-only after alignment (constrained)", "ao_after", "ao"),
    ("Answer-only after alignment (probability-weighted)", "ao_after", "ao_expected"),
)

# Prompt variants of prompt_stats.json and their labels, owned by the stage that writes them.
VARIANTS, VARIANT_LABELS = tuple(PROMPT_VARIANTS), PROMPT_VARIANTS

# (row label, input key) of the stages' latency rows; the benchmark adds one row per timed row of
# its latency.json. Speedups are taken against a CoT row of the same source (stage rows against
# stage 4a, benchmark rows against the benchmark's CoT) measured the same way (MEASURED_ALIKE).
LATENCY_ROWS = (
    ("CoT decoding (stage 4a, test)", "cot_test"),
    ("Answer-only before alignment (stage 6)", "ao_before"),
    ("Answer-only after alignment (stage 6)", "ao_after"),
)
MEASURED_ALIKE = ("batch_size", "device", "dtype")

ACCURACY_COLUMNS = ("method", "mae", "rmse", "acc", "acc_rounded", "n_invalid", "n_fallback", "n", "status")
TOKEN_COLUMNS = ("variant", "n", "mean", "p50", "p95", "max", "mean_reduction_pct", "p95_reduction_pct", "status")
LATENCY_COLUMNS = ("decoding", "engine", "batch_size", "device", "dtype", "n", "ms_per_sample", "samples_per_s",
                   "generated_tokens_per_sample", "ms_per_token", "warmup_seconds", "speedup_vs_cot", "status")


@dataclass(frozen=True)
class InputSpec:
    """One input of the tables: where it lies in a run directory, who writes it, what it must hold."""

    key: str                                   # RunInputs field and make_tables.py flag
    relative_path: str                         # under the run directory
    what: str                                  # the file's kind, for messages
    required: tuple[str, ...] = ()             # top-level keys that must hold JSON objects
    json: bool = True


INPUTS = (
    InputSpec("baselines", "baselines/metrics.json", "scripts/baselines.py's metrics.json", ("methods",)),
    InputSpec("prompt_stats", "prompt_stats.json", "stage 2's prompt_stats.json (preprocess_grpo.py --tokenizer)",
              ("splits",)),
    InputSpec("prompt_tokens", "prompt_tokens_test.npz", "stage 2's prompt_tokens_test.npz", json=False),
    InputSpec("cot_test", "cot_test/metrics.json", "stage 4a's metrics.json (inference_train_ddp.py)",
              ("predictions", "latency")),
    InputSpec("ao_before", "ao_before/metrics.json", "stage 6's metrics.json (inference_ao_ddp.py)",
              ("predictions", "latency")),
    InputSpec("ao_after", "ao_after/metrics.json", "stage 6's metrics.json (inference_ao_ddp.py)",
              ("predictions", "latency")),
    InputSpec("bench_latency", "bench_latency/latency.json", "scripts/bench_latency.py's latency.json", ("cot",)),
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

    @classmethod
    def default(cls, run_dir: str | os.PathLike) -> RunInputs:
        return cls(**{spec.key: Path(run_dir) / spec.relative_path for spec in INPUTS})

    def as_dict(self) -> dict[str, Path]:
        return dict(vars(self))


@dataclass
class Tables:
    accuracy: list[dict]
    tokens: list[dict]
    latency: list[dict]
    notes: dict[str, list[str]] = field(default_factory=dict)
    token_split: str = "test"
    prompt_meta: dict = field(default_factory=dict)


def read_json(path: Path) -> dict | None:
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


def load_inputs(inputs: RunInputs) -> dict[str, dict | None]:
    """Every JSON input of the run, checked against its kind; None for a file that is not there."""
    loaded = {}
    for spec in INPUTS:
        if not spec.json:
            continue
        path = getattr(inputs, spec.key)
        data = read_json(path)
        loaded[spec.key] = None if data is None else check_input(spec.key, path, data)
    return loaded


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def _accuracy_row(label: str, metrics, n_fallback, status: str) -> dict:
    if not isinstance(metrics, dict):
        return {"method": label, **{c: None for c in ACCURACY_COLUMNS[1:-1]}, "status": status}
    row = {"method": label}
    for key in ("mae", "rmse", "acc", "acc_rounded"):
        row[key] = _number(metrics.get(key))
    row["n_invalid"] = metrics.get("n_invalid")
    row["n_fallback"] = n_fallback
    row["n"] = metrics.get("n")
    row["status"] = "ok" if metrics.get("scored_on") in (None, "all rows") else str(metrics["scored_on"])
    return row


def accuracy_rows(inputs: RunInputs, loaded: dict[str, dict | None]) -> tuple[list[dict], list[str]]:
    """One row per baseline and per LLM decoding mode; absent results give "not run" rows."""
    rows, notes = [], []
    baselines = loaded["baselines"]
    methods = (baselines or {}).get("methods", {})
    for method in METHODS:
        label = METHOD_LABELS[method]
        entry = methods.get(method) if isinstance(methods, dict) else None
        if entry is None:
            reason = f"no {inputs.baselines}" if baselines is None else f"no {method} in {inputs.baselines}"
            rows.append(_accuracy_row(label, None, None, f"{NOT_RUN} ({reason})"))
        else:
            rows.append(_accuracy_row(label, entry.get("metrics"), entry.get("n_fallback"), ""))
    if baselines is not None:
        unknown = baselines.get("unknown", {})
        notes.append(
            f"Baselines fitted on {baselines.get('fit_on', '?')}; {unknown.get('rows_fallback', '?')} test rows "
            f"had an unseen user or item and were predicted as the global mean (the fallback column)."
        )
    for label, key, prediction_key in LLM_ROWS:
        result = loaded[key]
        predictions = (result or {}).get("predictions", {})
        metrics = predictions.get(prediction_key) if isinstance(predictions, dict) else None
        if metrics is None:
            where = getattr(inputs, key)
            reason = f"no {where}" if result is None else f"no predictions.{prediction_key} in {where}"
            rows.append(_accuracy_row(label, None, None, f"{NOT_RUN} ({reason})"))
        else:
            rows.append(_accuracy_row(label, metrics, None, ""))
    sizes = sorted({row["n"] for row in rows if row["n"] is not None})
    if len(sizes) > 1:
        notes.append(f"Rows were scored on different numbers of test rows ({', '.join(map(str, sizes))}); "
                     "compare them with care.")
    notes.append("acc is exact match; acc_rounded rounds a prediction to the nearest star first (the fair "
                 "accuracy for continuous predictions such as the baselines and probability-weighted rows).")
    return rows, notes


def token_rows(inputs: RunInputs, loaded: dict[str, dict | None], split: str = "test") -> tuple[list[dict], list[str], dict]:
    """Prompt-token statistics per variant of `split`, with reductions against the raw-history prompt."""
    stats = loaded["prompt_stats"]
    if stats is None:
        return ([{"variant": VARIANT_LABELS[v], **{c: None for c in TOKEN_COLUMNS[1:-1]},
                  "status": f"{NOT_RUN} (no {inputs.prompt_stats})"} for v in VARIANTS], [], {})
    split_stats = stats.get("splits", {}).get(split) if isinstance(stats.get("splits"), dict) else None
    if not isinstance(split_stats, dict):
        raise SirenError(f"{inputs.prompt_stats}: no splits.{split} (expected keys splits -> {split} -> variant)")
    meta = {key: stats.get(key) for key in ("tokenizer", "max_history", "use_long_history")}
    raw = split_stats.get(RAW_VARIANT) if isinstance(split_stats.get(RAW_VARIANT), dict) else {}
    rows = []
    for variant in VARIANTS:
        entry = split_stats.get(variant)
        if not isinstance(entry, dict) or _number(entry.get("mean")) is None:
            rows.append({"variant": VARIANT_LABELS[variant], **{c: None for c in TOKEN_COLUMNS[1:-1]},
                         "status": f"missing (no splits.{split}.{variant}.mean in {inputs.prompt_stats})"})
            continue
        row = {"variant": VARIANT_LABELS[variant], "n": entry.get("n")}
        for key in ("mean", "p50", "p95", "max"):
            row[key] = _number(entry.get(key))
        # A variant longer than the raw-history prompt gets a negative reduction, shown as is.
        for key in ("mean", "p95"):
            reference, value = _number(raw.get(key)), row[key]
            row[f"{key}_reduction_pct"] = (
                100.0 * (1.0 - value / reference) if reference and value is not None else None
            )
        row["status"] = ""
        rows.append(row)
    notes = [f"Prompt tokens of the {split} split, counted with {meta.get('tokenizer') or 'the run tokenizer'} "
             f"(max_history={meta.get('max_history')}); reductions are against the raw-history prompt."]
    return rows, notes, meta


def _latency_dict(value) -> dict | None:
    return value if isinstance(value, dict) and _number(value.get("ms_per_sample")) else None


def _same_device(first, second) -> bool:
    # Older files wrote "cuda (<name>)" in one stage and the bare card name in another.
    first, second = str(first), str(second)
    return first in second or second in first


def _measured_alike(first: dict, second: dict) -> bool:
    """Same batch size, device and dtype (a missing value, from an older file, never matches)."""
    if any(first.get(key) is None or second.get(key) is None for key in MEASURED_ALIKE):
        return False
    return (first["batch_size"] == second["batch_size"] and first["dtype"] == second["dtype"]
            and _same_device(first["device"], second["device"]))


def _latency_row(label: str, latency: dict, source: str) -> dict:
    row = {"decoding": label, "source": source, "is_cot": False}
    for key in ("engine", "batch_size", "device", "dtype", "n"):
        row[key] = latency.get(key)
    for key in ("ms_per_sample", "samples_per_s", "generated_tokens_per_sample", "ms_per_token", "warmup_seconds"):
        row[key] = _number(latency.get(key))
    row["status"] = "timing includes the warm-up (one batch only)" if latency.get("includes_warmup") else ""
    return row


def latency_rows(inputs: RunInputs, loaded: dict[str, dict | None]) -> tuple[list[dict], list[str]]:
    """ms/sample, samples/s, tokens of every timed row, and AO's speedup over the CoT row of the
    same source measured the same way (batch size, device, dtype)."""
    rows, notes = [], []
    for label, key in LATENCY_ROWS:
        latency = _latency_dict((loaded[key] or {}).get("latency"))
        if latency is None:
            rows.append({"decoding": label, **{c: None for c in LATENCY_COLUMNS[1:-1]},
                         "status": f"{NOT_RUN} (no latency in {getattr(inputs, key)})"})
            continue
        rows.append({**_latency_row(label, latency, "stages"), "is_cot": key == "cot_test"})
    bench = loaded["bench_latency"]
    if bench is not None:
        timed = bench.get("rows") if isinstance(bench.get("rows"), list) else [
            {**bench[mode], "decoding": mode} for mode in ("cot", "ao") if isinstance(bench.get(mode), dict)]
        for latency in filter(None, map(_latency_dict, timed)):
            decoding = "CoT" if latency.get("decoding") == "cot" else "answer-only"
            label = f"Benchmark: {decoding}, same prompts"
            rows.append({**_latency_row(label, latency, "benchmark"), "is_cot": latency.get("decoding") == "cot"})
        if bench.get("cot_tokens"):
            notes.append(f"The benchmark forces every CoT to {bench['cot_tokens']} generated tokens (the paper reports "
                         f"238 on average) on {bench.get('model', 'its model')}.")
    for row in rows:
        row["speedup_vs_cot"] = None
        if row.get("ms_per_sample") is None or row.get("is_cot"):
            continue
        references = [r for r in rows if r.get("is_cot") and r["source"] == row["source"] and r["ms_per_sample"]
                      and _measured_alike(r, row)]
        if references:
            row["speedup_vs_cot"] = min(r["ms_per_sample"] for r in references) / row["ms_per_sample"]
        elif any(r.get("is_cot") and r["source"] == row["source"] for r in rows):
            notes.append(f"{row['decoding']} ({row['engine']}, batch {row['batch_size']}, {row['device']}, "
                         f"{row['dtype']}): no CoT row of the same source was measured the same way (batch size, "
                         "device, dtype), so no speedup is given.")
    notes.append("Every row is timed after its warm-up (compilation, CUDA-graph capture, first batch), which is "
                 "reported apart; ms/sample is one process's time per sample at the row's batch size.")
    for row in rows:
        row.pop("source", None)
        row.pop("is_cot", None)
    return rows, notes


def build_tables(inputs: RunInputs, token_split: str = "test") -> Tables:
    """The three tables of a run; every input is read and checked first (`load_inputs`)."""
    loaded = load_inputs(inputs)
    accuracy, accuracy_notes = accuracy_rows(inputs, loaded)
    tokens, token_notes, meta = token_rows(inputs, loaded, token_split)
    latency, latency_notes = latency_rows(inputs, loaded)
    return Tables(accuracy, tokens, latency,
                  notes={"accuracy": accuracy_notes, "tokens": token_notes, "latency": latency_notes},
                  token_split=token_split, prompt_meta=meta)


def _cell(value, column: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if column == "max" and value.is_integer():
            return str(int(value))
        if column.endswith("_pct"):
            return f"{value:.1f}"
        if column in ("mean", "p50", "p95", "max", "ms_per_sample", "generated_tokens_per_sample", "ms_per_token",
                      "warmup_seconds"):
            return f"{value:.1f}"
        if column in ("speedup_vs_cot", "samples_per_s"):
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


HEADERS = {
    "method": "method", "mae": "MAE", "rmse": "RMSE", "acc": "acc", "acc_rounded": "acc (rounded)",
    "n_invalid": "invalid", "n_fallback": "fallback rows", "n": "n", "status": "note",
    "variant": "prompt", "mean": "mean tokens", "p50": "p50", "p95": "p95", "max": "max",
    "mean_reduction_pct": "mean vs raw (%)", "p95_reduction_pct": "p95 vs raw (%)",
    "decoding": "decoding", "device": "device", "ms_per_sample": "ms/sample", "samples_per_s": "samples/s",
    "generated_tokens_per_sample": "generated tokens/sample", "speedup_vs_cot": "speedup vs CoT",
    "engine": "engine", "batch_size": "batch", "dtype": "dtype", "ms_per_token": "ms/token",
    "warmup_seconds": "warm-up s",
}


def markdown_table(rows: list[dict], columns: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(HEADERS[c] for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c), c) for c in columns) + " |")
    return "\n".join(lines)


def render_markdown(tables: Tables, run_dir: str | os.PathLike, figure_name: str | None) -> str:
    sections = [f"# Results of {run_dir}", ""]
    parts = (
        ("1. Accuracy (test)", tables.accuracy, ACCURACY_COLUMNS, "accuracy"),
        (f"2. Token efficiency ({tables.token_split} prompts)", tables.tokens, TOKEN_COLUMNS, "tokens"),
        ("3. Latency", tables.latency, LATENCY_COLUMNS, "latency"),
    )
    for title, rows, columns, note_key in parts:
        sections += [f"## {title}", "", markdown_table(rows, columns), ""]
        sections += [f"- {note}" for note in tables.notes.get(note_key, [])]
        sections.append("")
    if figure_name:
        sections += [f"![prompt tokens and latency]({figure_name})", ""]
    return "\n".join(sections)


def write_csv(path: Path, rows: list[dict], columns: tuple[str, ...]) -> None:
    import csv
    import io

    from siren.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    atomic_write_text(path, buffer.getvalue())


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


def draw_figure(path: Path, tables: Tables, token_counts: dict[str, list[int]] | None) -> None:
    """Left: prompt tokens per variant (distribution, or mean with p50/p95 marks); right: latency bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siren.io import atomic_path

    fig, (ax_tokens, ax_latency) = plt.subplots(1, 2, figsize=(12, 4.5))
    variants = [v for v in VARIANTS if token_counts and token_counts.get(v)]
    if variants:
        # Whiskers at p5/p95 so the top whisker is the table's p95; the raw-history tail goes far beyond.
        ax_tokens.boxplot([token_counts[v] for v in variants], whis=(5, 95), showfliers=False, showmeans=True)
        ax_tokens.set_xticks(range(1, len(variants) + 1), [VARIANT_LABELS[v] for v in variants],
                             rotation=15, fontsize=8)
        ax_tokens.set_title(f"Prompt tokens per row ({tables.token_split}): quartiles, p5-p95, mean (triangle)",
                            fontsize=10)
    else:
        present = [row for row in tables.tokens if row["mean"] is not None]
        if present:
            positions = range(len(present))
            ax_tokens.bar(positions, [row["mean"] for row in present], color="tab:blue", label="mean")
            ax_tokens.scatter(positions, [row["p95"] or 0 for row in present], color="black", marker="_",
                              s=400, label="p95", zorder=3)
            ax_tokens.set_xticks(list(positions), [row["variant"] for row in present], rotation=15, fontsize=8)
            ax_tokens.legend()
            ax_tokens.set_title(f"Prompt tokens, mean and p95 ({tables.token_split})")
        else:
            ax_tokens.text(0.5, 0.5, "prompt stats: not run", ha="center", va="center")
    ax_tokens.set_ylabel("tokens")

    timed = [row for row in tables.latency if row["ms_per_sample"] is not None]
    if timed:
        positions = range(len(timed))
        bars = ax_latency.bar(positions, [row["ms_per_sample"] for row in timed], color="tab:orange")
        ax_latency.bar_label(bars, labels=[f"{row['ms_per_sample']:.1f} ms" for row in timed], fontsize=8)
        ax_latency.set_xticks(list(positions), [f"{row['decoding']}\n{row['engine'] or '?'}, batch {row['batch_size'] or '?'}"
                                                for row in timed], rotation=20, fontsize=7, ha="right")
        ax_latency.set_yscale("log")
        ax_latency.set_ylabel("ms / sample (log)")
        ax_latency.set_title("Latency")
    else:
        ax_latency.text(0.5, 0.5, "latency: not run", ha="center", va="center")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write_tables(folder: str | os.PathLike, tables: Tables, run_dir: str | os.PathLike,
                 token_counts: dict[str, list[int]] | None, figure: bool = True) -> str:
    """Write tables.md, the three CSVs and (with `figure`) tables.png into `folder`; returns the markdown."""
    folder = Path(folder)
    figure_name = "tables.png" if figure else None
    if figure_name:
        draw_figure(folder / figure_name, tables, token_counts)
    write_csv(folder / "accuracy.csv", tables.accuracy, ACCURACY_COLUMNS)
    write_csv(folder / "token_efficiency.csv", tables.tokens, TOKEN_COLUMNS)
    write_csv(folder / "latency.csv", tables.latency, LATENCY_COLUMNS)
    markdown = render_markdown(tables, run_dir, figure_name)
    from siren.io import atomic_write_text

    atomic_write_text(folder / "tables.md", markdown)
    return markdown
