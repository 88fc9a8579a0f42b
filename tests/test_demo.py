"""A reduced `make demo` (30 users) end to end: stages 1-6, baselines, latency, tables.

It runs on the synthetic data (tests/synthetic_data.py): nothing here depends on the real Movies
numbers, and a clone without the real data still runs the whole pipeline once. `make demo` itself
runs on the real data.
"""

import csv
import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from siren.tools.table_inputs import LLM_ROWS

ACCURACY_ROWS = ["Constant 5.0", "Global mean", "User + item bias", "MF with biases", "PMF",
                 *(label for label, _key, _prediction in LLM_ROWS)]
VARIANTS = {"Raw history (every interaction)": "raw_history", "Recent N only": "recent_only",
            "Sketch + recent N (SIREN)": "sketch_recent", "As built (this run's parquet)": "as_built"}


def demo(env: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env}, timeout=900)


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as handle:
        return {row.get("method") or row["variant"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_reduced_demo_end_to_end(tiny_model_dir, synthetic_root, tmp_path):
    run = tmp_path / "demo"
    # Every step runs, on fewer rows and steps than `make demo`: 60 train rows for 4a/4b (of the
    # slice's ~190; still several exactly-right teacher rows for stage 5), GRPO on 1 prompt x 2
    # responses per step with 1 held-out row, 8 stage-5 steps with 8 held-out rows, a 16-row format
    # check of the warm start. The warm start keeps its 60 steps (at 30 the random model does not yet
    # write the format and the demo stops there) on 4 rows a step instead of 8 (13 s less).
    proc = demo({"MODEL": str(tiny_model_dir), "RUN": str(run), "DATA_ROOT": str(synthetic_root),
                 "NUM_USERS": "30", "LIMIT": "30", "MAX_NEW_TOKENS": "40", "CACHE_DIR": str(tmp_path / "cache"),
                 "BENCH_SAMPLES": "2", "BENCH_COT_TOKENS": "8", "TRAIN_ROWS": "60", "WARM_CHECK_ROWS": "16", "WARM_BATCH": "4",
                 "GRPO_PROMPTS": "1", "GRPO_MICRO": "2", "GRPO_EVAL_ROWS": "1", "ALIGN_STEPS": "8",
                 "ALIGN_EVAL_ROWS": "8"}, tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[16/16]" in proc.stdout and "tables.md" in proc.stdout
    for name in ("tables.md", "accuracy.csv", "token_efficiency.csv", "latency.csv", "tables.png", "timings.csv"):
        assert (run / "tables" / name).is_file(), name

    timings = json.loads((run / "timings.json").read_text())
    assert len(timings["steps"]) == 16 and all(step["seconds"] >= 0 for step in timings["steps"])
    assert "## 4. Wall time per step" in (run / "tables" / "tables.md").read_text()

    accuracy = read_csv(run / "tables" / "accuracy.csv")
    assert list(accuracy) == ACCURACY_ROWS
    for method, row in accuracy.items():
        assert row["n_invalid"] != "", f"{method} has no invalid count"
        assert "not run" not in row["status"], f"{method}: {row['status']}"

    # The constant-5 row equals MAE/RMSE computed directly from the slice's test labels.
    with gzip.open(run / "data" / "Movies" / "test.jsonl.gz", "rt") as handle:
        labels = [json.loads(line)["label"] for line in handle][:30]
    assert len(labels) == 30
    constant = accuracy["Constant 5.0"]
    assert float(constant["mae"]) == pytest.approx(sum(5 - y for y in labels) / len(labels))
    assert float(constant["rmse"]) == pytest.approx(math.sqrt(sum((5 - y) ** 2 for y in labels) / len(labels)))
    assert int(constant["n"]) == len(labels)

    # The token-efficiency table's numbers are prompt_stats.json's.
    stats = json.loads((run / "prompt_stats.json").read_text())["splits"]["test"]
    tokens = read_csv(run / "tables" / "token_efficiency.csv")
    assert set(tokens) == set(VARIANTS)
    for label, variant in VARIANTS.items():
        for key in ("n", "mean", "p50", "p95", "max"):
            assert float(tokens[label][key]) == pytest.approx(stats[variant][key]), (label, key)

    # SIREN-AO's per-row errors against the model before alignment and the ablation, on the same rows.
    for name in ("after_vs_before", "after_vs_ce_only"):
        paired = json.loads((run / "paired" / f"{name}.json").read_text())
        assert paired["n"] == 30 and set(paired["readouts"]) == {"constrained", "probability-weighted"}
        assert paired["readouts"]["constrained"]["mae"][0] == pytest.approx(float(
            accuracy["SIREN-AO: after hidden-state alignment (constrained)"]["mae"]), abs=1e-4)

    tables = (run / "tables" / "tables.md").read_text()
    assert "## 3. Latency" in tables and "Benchmark: answer-only, same prompts" in tables

    # Latency rows say how they were measured; a speedup only where CoT was measured the same way.
    with open(run / "tables" / "latency.csv", newline="") as handle:
        latency = list(csv.DictReader(handle))
    stages = {row["decoding"]: row for row in latency if not row["decoding"].startswith("Benchmark")}
    cot, before = stages["CoT decoding (stage 4a, test)"], stages["Answer-only before alignment (stage 6)"]
    assert cot["engine"] == "hf-dynamic-cache" and before["engine"] == "eager"
    assert cot["batch_size"] == before["batch_size"] == "16" and cot["dtype"] == before["dtype"] == "float32"
    assert float(before["speedup_vs_cot"]) > 0 and float(before["warmup_seconds"]) > 0
    bench = [row for row in latency if row["decoding"].startswith("Benchmark")]
    assert {row["engine"] for row in bench} == {"eager", "compiled", "hf-dynamic-cache"}


def test_demo_without_data_names_get_data(tmp_path):
    proc = demo({"DATA_ROOT": str(tmp_path / "nowhere"), "RUN": str(tmp_path / "run")}, tmp_path)
    assert proc.returncode == 2
    assert "scripts/get_data.sh" in proc.stderr
    assert not (tmp_path / "run").exists()
