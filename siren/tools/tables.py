"""Paper-style tables of one run: accuracy, token efficiency and latency (plus timings and learning
curves), as markdown and CSV; siren.tools.table_inputs reads the run's files, siren.tools.table_figure draws
the figure.

`metrics` dicts come from siren.metrics.rating_metrics; `latency` dicts come from
siren.metrics.latency_summary: "ms_per_sample", "samples_per_s", "generated_tokens_per_sample",
"ms_per_token", "device", "n", and how they were measured: "engine", "batch_size", "dtype" (and
"warmup_seconds", never inside the timed figures). The latency table's speedup compares an
answer-only row with a CoT row only when both were measured the same way (same batch size,
device and dtype); otherwise it stays empty and a note says why.

To add a row: an accuracy row is one entry of siren.tools.table_inputs.LLM_ROWS (input, key under
"predictions"), a latency row one entry of LATENCY_ROWS.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from siren import SirenError
from siren.tools.baselines import METHOD_LABELS, METHODS
from siren.tools.table_inputs import LLM_ROWS, RunInputs, load_inputs
from siren.verl_build import PROMPT_VARIANTS, RAW_VARIANT

NOT_RUN = "not run"

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
TIMING_COLUMNS = ("step", "seconds", "share_pct")
MEASURED_ALIKE = ("batch_size", "device", "dtype")

ACCURACY_COLUMNS = ("method", "mae", "rmse", "acc", "acc_rounded", "n_invalid", "n_fallback", "n", "status")
TOKEN_COLUMNS = ("variant", "n", "mean", "p50", "p95", "max", "mean_reduction_pct", "p95_reduction_pct", "status")
LATENCY_COLUMNS = ("decoding", "engine", "batch_size", "device", "dtype", "n", "ms_per_sample", "samples_per_s",
                   "generated_tokens_per_sample", "ms_per_token", "warmup_seconds", "speedup_vs_cot", "status")



@dataclass
class Tables:
    accuracy: list[dict]
    tokens: list[dict]
    latency: list[dict]
    notes: dict[str, list[str]] = field(default_factory=dict)
    token_split: str = "test"
    prompt_meta: dict = field(default_factory=dict)
    timings: list[dict] = field(default_factory=list)
    curves: dict[str, list[dict]] = field(default_factory=dict)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


# The range of every number the tables show; a value outside it is a broken or hand-edited file.
_RANGES = {"mae": (0.0, 4.0), "rmse": (0.0, 4.0), "acc": (0.0, 1.0), "acc_rounded": (0.0, 1.0),
           "ms_per_sample": (0.0, math.inf), "samples_per_s": (0.0, math.inf), "ms_per_token": (0.0, math.inf),
           "generated_tokens_per_sample": (0.0, math.inf), "warmup_seconds": (0.0, math.inf),
           "seconds": (0.0, math.inf)}


def _checked(value, key: str, where: str) -> float | None:
    number = _number(value)
    low, high = _RANGES.get(key, (-math.inf, math.inf))
    if number is not None and not low <= number <= high:
        raise SirenError(f"{where}: {key} {number:g} is outside [{low:g}, {high:g}]")
    return number


def _accuracy_row(label: str, metrics, n_fallback, status: str, where: str = "") -> dict:
    if not isinstance(metrics, dict):
        return {"method": label, **{c: None for c in ACCURACY_COLUMNS[1:-1]}, "status": status}
    row = {"method": label}
    for key in ("mae", "rmse", "acc", "acc_rounded"):
        row[key] = _checked(metrics.get(key), key, where or label)
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
            rows.append(_accuracy_row(label, entry.get("metrics"), entry.get("n_fallback"), "",
                                      f"{inputs.baselines} ({method})"))
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
            rows.append(_accuracy_row(label, metrics, None, "", f"{getattr(inputs, key)} (predictions.{prediction_key})"))
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
    return value if isinstance(value, dict) and _number(value.get("ms_per_sample")) is not None else None


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


def _latency_row(label: str, latency: dict, source: str, where: str = "") -> dict:
    row = {"decoding": label, "source": source, "is_cot": False}
    for key in ("engine", "batch_size", "device", "dtype", "n"):
        row[key] = latency.get(key)
    for key in ("ms_per_sample", "samples_per_s", "generated_tokens_per_sample", "ms_per_token", "warmup_seconds"):
        row[key] = _checked(latency.get(key), key, where or label)
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
        rows.append({**_latency_row(label, latency, "stages", f"{getattr(inputs, key)} (latency)"),
                     "is_cot": key == "cot_test"})
    bench = loaded["bench_latency"]
    if bench is not None:
        timed = bench.get("rows") if isinstance(bench.get("rows"), list) else [
            {**bench[mode], "decoding": mode} for mode in ("cot", "ao") if isinstance(bench.get(mode), dict)]
        for latency in filter(None, map(_latency_dict, timed)):
            decoding = "CoT" if latency.get("decoding") == "cot" else "answer-only"
            label = f"Benchmark: {decoding}, same prompts"
            rows.append({**_latency_row(label, latency, "benchmark", str(inputs.bench_latency)),
                         "is_cot": latency.get("decoding") == "cot"})
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


def timing_rows(inputs: RunInputs, loaded: dict) -> tuple[list[dict], list[str]]:
    """Wall time per step of the run (timings.json), with each step's share of the total."""
    timings = loaded.get("timings")
    if timings is None:
        return [], []
    steps = timings.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, dict) and "step" in s for s in steps):
        raise SirenError(f"{inputs.timings}: steps must be a list of {{\"step\", \"seconds\"}} objects (given as --timings)")
    seconds = [_checked(step.get("seconds"), "seconds", f"{inputs.timings} ({step['step']})") for step in steps]
    total = sum(value or 0.0 for value in seconds)
    rows = [{"step": str(step["step"]), "seconds": value,
             "share_pct": 100.0 * value / total if value is not None and total else None}
            for step, value in zip(steps, seconds, strict=True)]
    rows.append({"step": "total", "seconds": total, "share_pct": 100.0 if total else None})
    notes = [f"Wall time of each step of {timings.get('run', 'the run')}, on {timings.get('machine', 'this machine')}."]
    return rows, notes


# Learning curves read from the trainers' logs: (curve, series, log key, transform).
def _format_rate(score: float) -> float:
    """The mean GRPO format score (+1 well formed, -1 not) as the fraction well formed."""
    return (score + 1.0) / 2.0


CURVE_SERIES = {
    "grpo": (("reward", "reward", None), ("eval_reward", "eval_reward", None),
             ("format_rate", "rewards/format_reward/mean", _format_rate),
             ("eval_format_rate", "eval_rewards/format_reward/mean", _format_rate)),
    "alignment": (("cosine_distance", "align_loss", None), ("eval_cosine_distance", "eval_align_loss", None),
                  ("eval_mae", "eval_rating_mae", None), ("eval_rmse", "eval_rating_rmse", None)),
    "alignment_ce": (("eval_mae", "eval_rating_mae", None), ("eval_rmse", "eval_rating_rmse", None),
                     ("lm_loss", "lm_loss", None)),
}
_CURVE_INPUTS = {"grpo": "grpo_log", "alignment": "alignment_log", "alignment_ce": "alignment_ce_log"}


def learning_curves(loaded: dict) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{curve: {series: [(step, value), ...]}} from the logs that are there (TRL/Trainer log_history:
    one object per logging or evaluation event, with "step")."""
    curves = {}
    for curve, series in CURVE_SERIES.items():
        log = loaded.get(_CURVE_INPUTS[curve])
        if not log:
            continue
        found = {}
        for name, key, transform in series:
            points = [(float(entry["step"]), float(entry[key])) for entry in log
                      if _number(entry.get(key)) is not None and _number(entry.get("step")) is not None]
            if points:
                found[name] = [(step, transform(value) if transform else value) for step, value in points]
        if found:
            curves[curve] = found
    return curves


def curve_notes(curves: dict) -> list[str]:
    notes = []
    for curve, series in curves.items():
        parts = [f"{name} {points[0][1]:.3f} (step {points[0][0]:g}) -> {points[-1][1]:.3f} (step {points[-1][0]:g})"
                 for name, points in series.items()]
        notes.append(f"{curve}: " + "; ".join(parts))
    return notes


def build_tables(inputs: RunInputs, token_split: str = "test") -> Tables:
    """The tables of a run; every input is read and checked first (`load_inputs`)."""
    loaded = load_inputs(inputs)
    accuracy, accuracy_notes = accuracy_rows(inputs, loaded)
    tokens, token_notes, meta = token_rows(inputs, loaded, token_split)
    latency, latency_notes = latency_rows(inputs, loaded)
    timings, timing_notes = timing_rows(inputs, loaded)
    curves = learning_curves(loaded)
    return Tables(accuracy, tokens, latency,
                  notes={"accuracy": accuracy_notes, "tokens": token_notes, "latency": latency_notes,
                         "timings": timing_notes, "curves": curve_notes(curves)},
                  token_split=token_split, prompt_meta=meta, timings=timings, curves=curves)


def _cell(value, column: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if column == "max" and value.is_integer():
            return str(int(value))
        if column.endswith("_pct"):
            return f"{value:.1f}"
        if column in ("mean", "p50", "p95", "max", "ms_per_sample", "generated_tokens_per_sample", "ms_per_token",
                      "warmup_seconds", "seconds", "share_pct"):
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
    "warmup_seconds": "warm-up s", "step": "step", "seconds": "seconds", "share_pct": "share (%)",
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
    if tables.timings:
        parts += (("4. Wall time per step", tables.timings, TIMING_COLUMNS, "timings"),)
    for title, rows, columns, note_key in parts:
        sections += [f"## {title}", "", markdown_table(rows, columns), ""]
        sections += [f"- {note}" for note in tables.notes.get(note_key, [])]
        sections.append("")
    if tables.curves:
        sections += ["## Learning curves", ""]
        sections += [f"- {note}" for note in tables.notes.get("curves", [])]
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


def write_tables(folder: str | os.PathLike, tables: Tables, run_dir: str | os.PathLike, figure_name: str | None) -> str:
    """Write tables.md (linking `figure_name`, drawn by siren.tools.table_figure, where given) and the CSVs
    into `folder`; returns the markdown."""
    from siren.io import atomic_write_text

    folder = Path(folder)
    write_csv(folder / "accuracy.csv", tables.accuracy, ACCURACY_COLUMNS)
    write_csv(folder / "token_efficiency.csv", tables.tokens, TOKEN_COLUMNS)
    write_csv(folder / "latency.csv", tables.latency, LATENCY_COLUMNS)
    if tables.timings:
        write_csv(folder / "timings.csv", tables.timings, TIMING_COLUMNS)
    markdown = render_markdown(tables, run_dir, figure_name)
    atomic_write_text(folder / "tables.md", markdown)
    return markdown
