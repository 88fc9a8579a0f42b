"""scripts/make_tables.py and siren.tools.tables on a synthetic run directory with literal metrics files."""

from __future__ import annotations

import csv
import gzip
import json
import math

import numpy as np
import pytest
from conftest import assert_refused, run_in_process

from siren.metrics import rating_metrics
from siren.tools.table_inputs import LLM_ROWS, RunInputs
from siren.tools.tables import VARIANT_LABELS, VARIANTS, build_tables

BASELINE_LABELS = ["Constant 5.0", "Global mean", "User + item bias", "MF with biases", "PMF"]
EXPECTED_ROWS = BASELINE_LABELS + [label for label, _key, _pred in LLM_ROWS]

PROMPT_STATS = {
    "tokenizer": "ckpt/tiny-qwen3",
    "max_history": 10,
    "use_long_history": True,
    "splits": {
        "test": {
            "as_built": {"n": 4, "mean": 365.75, "p50": 346.0, "p95": 522.0, "max": 625},
            "recent_only": {"n": 4, "mean": 297.5, "p50": 284.0, "p95": 411.0, "max": 479},
            "sketch_recent": {"n": 4, "mean": 365.75, "p50": 346.0, "p95": 522.0, "max": 625},
            "raw_history": {"n": 4, "mean": 423.25, "p50": 284.0, "p95": 1005.6, "max": 11012},
        },
    },
    "counts": {"rows_without_sketch": {"test": 1}, "rows_over_max_prompt_tokens": {"test": 0}},
}
LABELS = [5.0, 4.0, 5.0, 1.0]


def _latency(ms: float, tokens: float, device: str = "cpu", engine: str = "eager", batch_size: int = 16,
             dtype: str = "float32", **extra) -> dict:
    return {"ms_per_sample": ms, "samples_per_s": 1000.0 / ms, "generated_tokens_per_sample": tokens,
            "ms_per_token": ms / tokens, "device": device, "n": len(LABELS), "engine": engine, "batch_size": batch_size,
            "dtype": dtype, "warmup_seconds": 1.5, **extra}


def _write(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture()
def run_dir(tmp_path):
    """A run with every input except ao_after; the CoT row has one invalid prediction."""
    run = tmp_path / "run"
    _write(run / "prompt_stats.json", PROMPT_STATS)
    np.savez(run / "prompt_tokens_test.npz", **{v: np.array([300, 350, 400, 500]) for v in VARIANTS})
    _write(run / "cot_test" / "metrics.json", {
        "predictions": {"cot": rating_metrics([5.0, None, 4.0, 2.0], LABELS),
                        "cot_invalid_as_5": rating_metrics([5.0, None, 4.0, 2.0], LABELS, invalid_fill=5.0)},
        "latency": _latency(2000.0, 238.0, engine="hf-dynamic-cache"),
    })
    _write(run / "ao_before" / "metrics.json", {
        "predictions": {"ao": rating_metrics([5.0, 5.0, 5.0, 5.0], LABELS),
                        "ao_expected": rating_metrics([4.5, 4.4, 4.6, 4.1], LABELS)},
        "latency": _latency(25.0, 1.0),
    })
    return run


def test_tables_from_literal_files(run_dir, synthetic_root):
    limit = 30
    run_in_process("scripts/baselines.py", "--data_root", str(synthetic_root), "--out_dir",
               str(run_dir / "baselines"), "--limit", str(limit))
    proc = run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir))
    assert "## 1. Accuracy" in proc.stdout and "not run: ao_after, bench_latency" in proc.stdout

    accuracy = _read_csv(run_dir / "tables" / "accuracy.csv")
    assert [row["method"] for row in accuracy] == EXPECTED_ROWS
    by_method = {row["method"]: row for row in accuracy}

    with gzip.open(synthetic_root / "Movies" / "test.jsonl.gz", "rt") as handle:
        labels = [float(json.loads(line)["label"]) for line in handle][:limit]
    constant = by_method["Constant 5.0"]
    assert float(constant["mae"]) == pytest.approx(sum(5.0 - y for y in labels) / len(labels))
    assert float(constant["rmse"]) == pytest.approx(math.sqrt(sum((5.0 - y) ** 2 for y in labels) / len(labels)))
    assert int(constant["n"]) == limit

    cot = by_method["GRPO, CoT decoding (invalid rows left out)"]
    assert cot["n_invalid"] == "1" and float(cot["mae"]) == pytest.approx((0 + 1 + 1) / 3)
    assert "1 invalid rows left out" in cot["status"]
    # The all-rows twin scores the invalid row as 5.0, as the authors did, with the count beside it.
    authors = by_method["GRPO, CoT decoding (invalid rows scored 5.0, as the authors did)"]
    assert authors["n_invalid"] == "1" and int(authors["n"]) == 4
    assert float(authors["mae"]) == pytest.approx((0 + 1 + 1 + 1) / 4) and "1 invalid filled with 5.0" in authors["status"]
    assert float(by_method["GRPO, answer-only before alignment (probability-weighted)"]["rmse"]) == pytest.approx(
        rating_metrics([4.5, 4.4, 4.6, 4.1], LABELS)["rmse"])
    for row in accuracy:
        ran = not row["status"].startswith("not run")
        # Every method that ran reports its invalid count; the rest say "not run" and hold no numbers.
        assert (row["n_invalid"] != "") == ran
        assert ran or row["mae"] == row["rmse"] == ""
    assert by_method["SIREN-AO: after hidden-state alignment (constrained)"]["status"].startswith("not run")

    tokens = _read_csv(run_dir / "tables" / "token_efficiency.csv")
    assert [row["variant"] for row in tokens] == [VARIANT_LABELS[v] for v in VARIANTS]
    raw = PROMPT_STATS["splits"]["test"]["raw_history"]
    for variant, row in zip(VARIANTS, tokens, strict=True):
        stats = PROMPT_STATS["splits"]["test"][variant]
        for key in ("mean", "p50", "p95", "max"):
            assert float(row[key]) == pytest.approx(stats[key])
        assert float(row["mean_reduction_pct"]) == pytest.approx(100 * (1 - stats["mean"] / raw["mean"]))
        assert float(row["p95_reduction_pct"]) == pytest.approx(100 * (1 - stats["p95"] / raw["p95"]))

    latency = {row["decoding"]: row for row in _read_csv(run_dir / "tables" / "latency.csv")}
    before = latency["Answer-only before alignment (stage 6)"]
    assert float(before["speedup_vs_cot"]) == pytest.approx(80.0)
    assert (before["engine"], before["batch_size"], before["device"], before["dtype"]) == ("eager", "16", "cpu", "float32")
    assert float(before["warmup_seconds"]) == 1.5
    assert float(latency["CoT decoding (stage 4a, test)"]["generated_tokens_per_sample"]) == 238.0
    assert latency["CoT decoding (stage 4a, test)"]["engine"] == "hf-dynamic-cache"
    assert latency["Answer-only after alignment (stage 6)"]["status"].startswith("not run")

    markdown = (run_dir / "tables" / "tables.md").read_text()
    assert "| Sketch + recent N (SIREN) | 4 | 365.8 |" in markdown and "(tables.png)" in markdown
    assert (run_dir / "tables" / "tables.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((run_dir / "tables" / "manifest.json").read_text())
    assert manifest["counts"]["inputs_missing"] == ["ao_after", "bench_latency", "ao_zero_shot", "ao_warm", "ao_ce_only",
                                                    "grpo_log", "alignment_log", "alignment_ce_log", "timings"]

    refused = run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir), check=False)
    assert_refused(refused, "--overwrite")


def test_empty_run_gives_not_run_rows_and_summary_figure(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    tables = build_tables(RunInputs.default(run))
    assert [row["method"] for row in tables.accuracy] == EXPECTED_ROWS
    assert all(row["status"].startswith("not run") and row["mae"] is None for row in tables.accuracy)
    assert all(row["status"].startswith("not run") for row in tables.tokens + tables.latency)

    # prompt stats without the per-row npz: the figure falls back to mean / p95 bars.
    _write(run / "prompt_stats.json", PROMPT_STATS)
    bench_rows = [
        {"decoding": "cot", **_latency(900.0, 238.0, engine="hf-dynamic-cache", batch_size=1)},
        {"decoding": "cot", **_latency(600.0, 238.0, engine="hf-static-cache", batch_size=1)},
        {"decoding": "ao", **_latency(30.0, 1.0, engine="eager", batch_size=1)},
        {"decoding": "ao", **_latency(10.0, 1.0, engine="compiled", batch_size=1)},
        {"decoding": "ao", **_latency(2.0, 1.0, engine="compiled", batch_size=32)},
    ]
    _write(run / "bench_latency" / "latency.json", {"cot_tokens": 238, "model": "tiny", "rows": bench_rows,
                                                    "cot": bench_rows[1], "ao": bench_rows[3]})
    out = tmp_path / "tables"
    proc = run_in_process("scripts/make_tables.py", "--run_dir", str(run), "--out_dir", str(out))
    assert "read 2 of 14 inputs" in proc.stdout
    latency = {(row["decoding"], row["engine"], row["batch_size"]): row for row in _read_csv(out / "latency.csv")}
    answer_only = "Benchmark: answer-only, same prompts"
    # Against the fastest CoT row measured the same way (batch 1, same device and dtype).
    assert float(latency[(answer_only, "eager", "1")]["speedup_vs_cot"]) == pytest.approx(600.0 / 30.0)
    assert float(latency[(answer_only, "compiled", "1")]["speedup_vs_cot"]) == pytest.approx(600.0 / 10.0)
    # A batch of 32 is not per-sample latency: no CoT row was measured that way, so no speedup.
    assert latency[(answer_only, "compiled", "32")]["speedup_vs_cot"] == ""
    assert latency[("Benchmark: CoT, same prompts", "hf-static-cache", "1")]["speedup_vs_cot"] == ""
    assert (out / "tables.png").stat().st_size > 0


def test_missing_variant_and_rows_measured_otherwise_are_flagged(tmp_path):
    run = tmp_path / "run"
    stats = json.loads(json.dumps(PROMPT_STATS))
    del stats["splits"]["test"]["recent_only"]
    _write(run / "prompt_stats.json", stats)
    _write(run / "cot_test" / "metrics.json",
           {"predictions": {}, "latency": _latency(2000.0, 238.0, "NVIDIA H100", dtype="bfloat16")})
    _write(run / "ao_after" / "metrics.json",  # the same card, named the older way, at another batch size
           {"predictions": {}, "latency": _latency(20.0, 1.0, "cuda (NVIDIA H100)", batch_size=8, dtype="bfloat16")})
    _write(run / "ao_before" / "metrics.json", {"predictions": {}, "latency": _latency(20.0, 1.0, "cpu")})
    tables = build_tables(RunInputs.default(run))
    recent = next(row for row in tables.tokens if row["variant"] == VARIANT_LABELS["recent_only"])
    assert recent["mean"] is None and recent["status"].startswith("missing")
    latency = {row["decoding"]: row for row in tables.latency}
    assert latency["Answer-only before alignment (stage 6)"]["speedup_vs_cot"] is None  # other device and dtype
    assert latency["Answer-only after alignment (stage 6)"]["speedup_vs_cot"] is None   # other batch size
    flagged = [note for note in tables.notes["latency"] if "was measured the same way" in note]
    assert len(flagged) == 2 and flagged[0].startswith("Answer-only before alignment (stage 6) (eager, batch 16, cpu")
    cot = next(row for row in tables.accuracy if row["method"] == "GRPO, CoT decoding (invalid rows left out)")
    assert "no predictions.cot" in cot["status"]


def test_bad_inputs_are_clear_errors(tmp_path):
    missing = run_in_process("scripts/make_tables.py", "--run_dir", str(tmp_path / "nope"), check=False)
    assert_refused(missing, "does not exist")

    run = tmp_path / "run"
    (run / "cot_test").mkdir(parents=True)
    (run / "cot_test" / "metrics.json").write_text("{not json")
    broken = run_in_process("scripts/make_tables.py", "--run_dir", str(run), check=False)
    assert_refused(broken, "cot_test/metrics.json: not valid JSON")
    assert not (run / "tables.md").exists() and not (run / "accuracy.csv").exists()

    (run / "cot_test" / "metrics.json").unlink()
    _write(run / "prompt_stats.json", {"splits": {"train": {}}})
    no_split = run_in_process("scripts/make_tables.py", "--run_dir", str(run), check=False)
    assert_refused(no_split, "no splits.test")


COT_METRICS = {"predictions": {"cot": rating_metrics([5.0, 4.0, 4.0, 2.0], LABELS)}, "latency": _latency(2000.0, 238.0)}
WRONG_INPUTS = {
    "any_json_as_ao_before": ("ao_before", {"anything": 1},
                              r"is not stage 6's metrics\.json \(inference_ao_ddp\.py\): it has no 'predictions' key "
                              r"\(given as --ao_before\)"),
    "cot_metrics_as_ao_before": ("ao_before", COT_METRICS,
                                 r"is not stage 6's metrics\.json .*: its predictions hold cot, not ao or ao_expected"),
    "ao_metrics_as_cot_test": ("cot_test", {"predictions": {"ao": {}, "ao_expected": {}}, "latency": {}},
                               r"is not stage 4a's metrics\.json .*: its predictions hold ao, ao_expected, not cot"),
    "predictions_not_an_object": ("ao_after", {"predictions": [1, 2], "latency": {}},
                                  r"'predictions' holds list, not an object \(given as --ao_after\)"),
    "prompt_stats_as_baselines": ("baselines", PROMPT_STATS, r"is not scripts/baselines\.py's metrics\.json: it has no "
                                                             r"'methods' key"),
    "metrics_as_prompt_stats": ("prompt_stats", COT_METRICS, r"is not stage 2's prompt_stats\.json .*no 'splits' key"),
    "latency_without_cot": ("bench_latency", {"ao": _latency(30.0, 1.0)},
                            r"is not scripts/bench_latency\.py's latency\.json: it has no 'cot' key"),
}


@pytest.mark.parametrize("case", list(WRONG_INPUTS))
def test_a_file_of_another_kind_is_refused_in_one_line(case, run_dir, tmp_path):
    """Issue 14: make_tables accepted any JSON as --ao_before and printed "not run"."""
    import re

    key, content, message = WRONG_INPUTS[case]
    wrong = tmp_path / "elsewhere" / "wrong.json"
    _write(wrong, content)
    out = tmp_path / "tables"
    proc = run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir), f"--{key}", str(wrong),
                      "--output_dir", str(out), check=False)
    assert_refused(proc, only_line=True)
    assert proc.stderr.startswith(f"error: {wrong} ") and re.search(message, proc.stderr), proc.stderr
    assert not out.exists()


def test_the_tables_appear_together_and_overwrite_keeps_other_files(run_dir, tmp_path):
    out = tmp_path / "tables"
    run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir), "--out_dir", str(out), "--no_figure")
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.csv", "latency.csv", "manifest.json", "tables.md",
                                                     "token_efficiency.csv"]
    (out / "notes.txt").write_text("mine")
    run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir), "--output_dir", str(out), "--overwrite")
    assert (out / "notes.txt").read_text() == "mine" and (out / "tables.png").is_file()


def _log(path, entries) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))


def test_wall_times_and_learning_curves(run_dir):
    _write(run_dir / "timings.json", {"steps": [{"step": "stage 1", "seconds": 30.0}, {"step": "stage 5", "seconds": 90.0}],
                                      "machine": "2 cores"})
    _log(run_dir / "grpo_train_log.jsonl", [
        {"step": 1, "reward": 0.5, "rewards/format_reward/mean": 0.0},
        {"step": 1, "eval_reward": 0.8, "eval_rewards/format_reward/mean": 0.5},
        {"step": 2, "reward": 1.5, "rewards/format_reward/mean": 1.0},
        {"step": 2, "eval_reward": 1.7, "eval_rewards/format_reward/mean": 1.0},
        {"step": 2, "train_runtime": 10.0}])
    _log(run_dir / "alignment_train_log.jsonl", [
        {"step": 5, "align_loss": 0.4, "loss": 0.4}, {"step": 5, "eval_align_loss": 0.45, "eval_rating_mae": 1.2},
        {"step": 10, "align_loss": 0.1}, {"step": 10, "eval_align_loss": 0.2, "eval_rating_mae": 0.9}])
    tables = build_tables(RunInputs.default(run_dir))
    assert [(row["step"], row["seconds"]) for row in tables.timings] == [("stage 1", 30.0), ("stage 5", 90.0),
                                                                          ("total", 120.0)]
    assert tables.timings[1]["share_pct"] == pytest.approx(75.0)
    grpo = tables.curves["grpo"]
    assert grpo["eval_reward"] == [(1.0, 0.8), (2.0, 1.7)]
    assert grpo["format_rate"] == [(1.0, 0.5), (2.0, 1.0)] and grpo["eval_format_rate"] == [(1.0, 0.75), (2.0, 1.0)]
    assert tables.curves["alignment"]["eval_mae"] == [(5.0, 1.2), (10.0, 0.9)]
    assert "alignment_ce" not in tables.curves
    run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir))
    markdown = (run_dir / "tables" / "tables.md").read_text()
    assert "## 4. Wall time per step" in markdown and "| total | 120.0 | 100.0 |" in markdown
    assert "eval_mae 1.200 (step 5) -> 0.900 (step 10)" in markdown
    assert (run_dir / "tables" / "timings.csv").is_file() and (run_dir / "tables" / "tables.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("key,script,split,message", [
    ("ao_after", "inference_ao_ddp.py", "valid", r"--ao_after .* was made with split 'valid' .* asks for 'test'"),
    ("cot_test", "inference_train_ddp.py", "train", r"--cot_test .* was made with split 'train' .* asks for 'test'"),
    ("ao_before", "inference_train_ddp.py", "test", r"was written by inference_train_ddp\.py, not inference_ao_ddp\.py"),
])
def test_a_prediction_run_on_another_split_or_stage_is_refused(run_dir, key, script, split, message):
    """Issue 20: a valid-split stage-6 run, or a train-split 4a run, went under "Accuracy (test)" as "ok"."""
    import re

    metrics = run_dir / "cot_test" / "metrics.json" if key == "cot_test" else run_dir / "ao_before" / "metrics.json"
    folder = run_dir / key
    if not (folder / "metrics.json").exists():
        _write(folder / "metrics.json", json.loads(metrics.read_text()))
    _write(folder / "manifest.json", {"script": script, "args": {"split": split}})
    proc = run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and re.search(message, proc.stderr), proc.stderr
    assert not (run_dir / "tables" / "tables.md").exists()


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["predictions"]["ao"].update(rmse=-0.5), r"rmse -0\.5 is outside \[0, 4\]"),
    (lambda m: m["predictions"]["ao_expected"].update(acc=1.5), r"acc 1\.5 is outside \[0, 1\]"),
    (lambda m: m["latency"].update(ms_per_sample=-3.0), r"ms_per_sample -3 is outside \[0, inf\]"),
])
def test_numbers_out_of_range_are_refused(run_dir, edit, message):
    import re

    path = run_dir / "ao_before" / "metrics.json"
    metrics = json.loads(path.read_text())
    edit(metrics)
    _write(path, metrics)
    proc = run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir), check=False)
    assert proc.returncode == 2 and re.search(message, proc.stderr) and str(path) in proc.stderr, proc.stderr


def test_an_empty_run_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_in_process("scripts/make_tables.py", "--run_dir", str(tmp_path / "empty"), check=False)
    assert_refused(proc, "no inputs in")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == []


def test_the_tables_never_go_where_their_inputs_are(run_dir):
    """Issue 20: the tables' default folder is <run_dir>/tables; the run folder itself holds inputs."""
    proc = run_in_process("scripts/make_tables.py", "--run_dir", str(run_dir), "--output_dir", str(run_dir), "--overwrite",
                      check=False)
    assert_refused(proc, only_line=True)
    assert "(--output_dir) holds this stage's input" in proc.stderr
    assert not (run_dir / "tables.md").exists() and not (run_dir / "manifest.json").exists()
