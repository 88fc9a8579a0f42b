"""The one-JSON-file CPU benchmarks (scripts/bench_decode.py, scripts/bench_ao_flops.py) end to end
on the tiny model: what they write, and that the output folder is checked before anything loads."""

import json

import pytest
from conftest import assert_refused, run_in_process

from siren.decode_attention import GQA_DECODE
from siren.tools.flops import ForwardShape, op_kind, time_breakdown


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
                   "--breakdown", "--output_dir", str(out))
    summary = json.loads((out / "flops.json").read_text())
    assert [(r["layout"], r["batch_size"]) for r in summary["results"]] == [
        ("packed", 2), ("packed", 3), ("padded", 2), ("padded", 3)]
    for row in summary["results"]:
        assert row["rows"] == 6 and row["seconds"] > 0 and row["useful_gflop"] >= 0
        assert (row["padding_share"] == 0) == (row["layout"] == "packed")  # packed rows compute real tokens only
        assert row["efficiency"] == pytest.approx(row["achieved_gflops"] / row["matmul"]["gflops"], abs=2e-3)
        shares = row["breakdown"]["shares"]
        assert set(shares) == {"linear", "attention", "other"} and sum(shares.values()) == pytest.approx(1, abs=1e-3)
        assert shares["linear"] > 0 and shares["attention"] > 0  # the profiled pass saw both kernels
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


def test_the_flop_count_of_a_row():
    """Linear layers over every token plus the LM head at one position, and causal attention as
    siren.tools.flops states it: 2 * T^2 * width per layer."""
    shape = ForwardShape(linear_weights=1000, linear_shapes={(10, 100): 1}, attention_width=8, num_layers=2,
                         hidden_size=10, vocab_size=50)
    assert shape.linear_flops(3) == 2 * 1000 * 3 + 2 * 10 * 50
    assert shape.attention_flops(3) == 2 * 2 * 3 * 3 * 8
    assert shape.row_flops(3) == 6000 + 1000 + 288


def test_where_the_time_goes():
    """The timed seconds split by the profiled shares: 20 s timed, 10 s profiled (mm 6, attention 3,
    the rest 1) -> linear 12 s, attention 6 s, other 2 s. With the linear layers at the 200 GFLOP/s
    ceiling they would take 6 s: 1.8 TFLOP in 14 s is 64% of the ceiling, against 45% measured."""
    profile = {"aten::mm": 5.0, "aten::addmm": 1.0, "aten::_scaled_dot_product_flash_attention_for_cpu": 3.0,
               "aten::mul": 0.6, "aten::add": 0.4}
    report = time_breakdown(profile, seconds=20.0, linear_flops=1.2e12, attention_flops=0.6e12, useful=1.8e12,
                            ceiling_gflops=200.0, top=1)
    assert report["shares"] == {"linear": 0.6, "attention": 0.3, "other": 0.1}
    assert report["linear_gflops"] == 100.0 and report["attention_gflops"] == 100.0
    assert report["top_other_ops"] == [{"op": "aten::mul", "share": 0.06}]
    assert report["efficiency_if_linear_at_ceiling"] == pytest.approx(1.8e12 / 14 / 200e9, abs=1e-3)
    assert [op_kind(n) for n in ("aten::mm", "aten::scaled_dot_product_attention", "aten::silu")] == [
        "linear", "attention", "other"]
    with pytest.raises(ValueError, match="positive"):
        time_breakdown({}, seconds=1.0, linear_flops=1.0, attention_flops=1.0, useful=1.0, ceiling_gflops=1.0)
