"""The one-JSON-file CPU benchmarks (scripts/bench_decode.py, scripts/bench_ao_flops.py) end to end
on the tiny model: what they write, and that the output folder is checked before anything loads."""

import json

import pytest
from conftest import assert_refused, run_in_process

from siren.decode_attention import GQA_DECODE


@pytest.mark.slow
def test_the_decode_benchmark(tiny_model_dir, verl_dir, tmp_path):
    out = tmp_path / "bench"
    proc = run_in_process("scripts/bench_decode.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                          "--split", "test", "--batch_size", "3", "--steps", "2", "--repeats", "1", "--dtype", "float32",
                          "--threads", "1", "--output_dir", str(out))
    assert "decode step" in proc.stdout and "same tokens with both attentions: True" in proc.stdout
    summary = json.loads((out / "decode.json").read_text())
    assert summary["batch_size"] == 3 and summary["steps"] == 2 and summary["threads"] == 1
    assert [r["attention"] for r in summary["results"]] == ["sdpa", GQA_DECODE]
    # Timings of two tiny-model steps on a shared machine may come out in any order: only their presence
    # is checked here (the figures that count are the real model's, in docs/benchmarks.md).
    assert all(isinstance(r["decode_step_s"], float) and r["prompt_forward_s"] > 0 and r["same_tokens_as_sdpa"]
               for r in summary["results"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["script"] == "scripts/bench_decode.py" and manifest["counts"]["measurements"] == 2


@pytest.mark.slow
def test_the_stage6_flops_benchmark(tiny_model_dir, verl_dir, tmp_path):
    out = tmp_path / "flops"
    run_in_process("scripts/bench_ao_flops.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                   "--split", "test", "--limit", "6", "--batch_sizes", "2", "3", "--matmul_seconds", "0.2",
                   "--output_dir", str(out))
    summary = json.loads((out / "flops.json").read_text())
    assert [(r["layout"], r["batch_size"]) for r in summary["results"]] == [
        ("packed", 2), ("packed", 3), ("padded", 2), ("padded", 3)]
    for row in summary["results"]:
        assert row["rows"] == 6 and row["seconds"] > 0 and row["useful_gflop"] >= 0
        assert (row["padding_share"] == 0) == (row["layout"] == "packed")  # packed rows compute real tokens only
        assert row["efficiency"] == pytest.approx(row["achieved_gflops"] / row["matmul"]["gflops"], abs=2e-3)
    again = run_in_process("scripts/bench_ao_flops.py", "--model", str(tiny_model_dir), "--data_path", str(verl_dir),
                           "--output_dir", str(out), check=False)
    assert_refused(again, "--overwrite")


def test_a_benchmark_refuses_a_used_folder_before_loading(tmp_path):
    """The folder check comes first: a model path that does not exist is never reached."""
    out = tmp_path / "used"
    out.mkdir()
    (out / "decode.json").write_text("{}")
    proc = run_in_process("scripts/bench_decode.py", "--model", str(tmp_path / "no-model"), "--data_path",
                          str(tmp_path / "no-data"), "--output_dir", str(out), check=False)
    assert_refused(proc, "--overwrite")
