"""scripts/gpu_check.sh on a machine without CUDA (its argument handling and refusal) and the
measuring helpers of siren.tools.gpu_check (no GPU needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, run_in_process, run_script

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def run_check(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["--steps", "tiny,bogus"], "unknown step group 'bogus'"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--output_dir"], "--output_dir needs a folder"),
    (["--steps", ""], "--steps is empty"),
])
def test_bad_arguments_are_one_line_errors(args, message, tmp_path):
    proc = run_check(*args, "--output_dir", str(tmp_path / "out")) if args[-1] != "--output_dir" else run_check(*args)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_help_describes_every_step_group():
    proc = run_check("--help")
    assert proc.returncode == 0
    for group in ("tiny", "scale", "latency", "tests", "vllm", "verl", "memory"):
        assert f"\n  {group} " in proc.stdout
    assert "set -euo" not in proc.stdout


def test_refuses_a_machine_without_cuda(tmp_path):
    # Hiding every GPU gives the CPU-only case on any machine.
    proc = run_check("--output_dir", str(tmp_path / "out"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2 and proc.stderr.startswith("error: no CUDA device is visible"), proc.stderr
    assert proc.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_step_runner_records_time_status_rate_and_skips(tmp_path):
    summary = tmp_path / "summary.json"
    ok = run_script("-m", "siren.tools.gpu_check", "run", "--summary", str(summary), "--name", "sleepy", "--rows", "10",
                    "--log", str(tmp_path / "sleepy.log"), "--", sys.executable, "-c",
                    "import time; print('hi'); print('memory estimate: 12.0 GiB'); time.sleep(0.3)")
    assert "hi" in ok.stdout and (tmp_path / "sleepy.log").read_text() == "hi\nmemory estimate: 12.0 GiB\n"
    failed = run_script("-m", "siren.tools.gpu_check", "run", "--summary", str(summary), "--name", "broken", "--",
                        sys.executable, "-c", "raise SystemExit(3)", check=False)
    assert failed.returncode == 1
    run_in_process("-m", "siren.tools.gpu_check", "skip", "--summary", str(summary), "--name", "vllm-4a", "--reason", "no vllm")
    steps = {s["name"]: s for s in json.loads(summary.read_text())["steps"]}
    assert steps["sleepy"]["status"] == "ok" and steps["sleepy"]["seconds"] >= 0.3
    assert steps["sleepy"]["estimate"] == "memory estimate: 12.0 GiB"  # beside the measured peak
    assert steps["sleepy"]["rows_per_s"] == pytest.approx(10 / steps["sleepy"]["seconds"], rel=0.02)
    assert steps["broken"]["status"] == "failed (exit 3)"
    assert steps["vllm-4a"]["status"] == "skipped: no vllm"
    table = run_in_process("-m", "siren.tools.gpu_check", "table", "--summary", str(summary)).stdout
    assert "sleepy" in table and "failed (exit 3)" in table and "skipped: no vllm" in table


def test_synthetic_cot_is_a_correct_stage_4a_folder(tiny_model_dir, verl_dir, tmp_path):
    from siren.cot_results import MASK_NAME, load_mask, load_thinking, thinking_file

    out = tmp_path / "cot"
    run_in_process("-m", "siren.tools.gpu_check", "synthetic-cot", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
               "--split", "train", "--limit", "5", "--output_dir", str(out))
    rows = load_thinking(thinking_file(out))
    assert len(rows) == 5 and all(r["correct"] and r["format_ok"] and r["reasoning"].endswith("</think>") for r in rows)
    assert load_mask(out / MASK_NAME, 5).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert "synthetic" in manifest and manifest["model"]["path"] == str(tiny_model_dir.resolve())
