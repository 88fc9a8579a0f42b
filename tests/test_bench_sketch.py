"""scripts/bench_sketch.py: the stage-1 benchmark's runs and the arithmetic of its summary."""

from __future__ import annotations

import json

import pytest
from conftest import assert_refused, load_script, run_in_process


def _cold(wall, load, encode):
    return {"wall_seconds": wall, "timings": {"embed": load + encode},
            "encoder": {"load_seconds": load, "encode_seconds": encode, "threads": 2, "device": "cpu"}}


def test_summary_medians_and_ratios():
    floors = [{"encode_seconds": e, "process_seconds": e + 10.0, "data_seconds": 1.0, "import_and_load_seconds": 8.0}
              for e in (50.0, 40.0, 60.0)]
    colds = [_cold(70.0, 7.0, 55.0), _cold(60.0, 7.0, 48.0), _cold(66.0, 8.0, 52.0)]
    warms = [{"wall_seconds": w} for w in (5.0, 4.0, 9.0)]
    summary = load_script("scripts/bench_sketch.py").summarize(floors, colds, warms)
    assert summary["encode_seconds"] == 50.0 and summary["cold_seconds"] == 66.0 and summary["warm_seconds"] == 5.0
    assert summary["cold_over_encode"] == round(66.0 / 50.0, 3)
    assert summary["cold_over_encode_per_repeat"] == [1.4, 1.5, 1.1]
    # The floor process minus its data reading: medians of 59, 49, 69.
    assert summary["cold_over_encode_process"] == round(66.0 / 59.0, 3)
    assert summary["cold_over_own_encode"] == round(sorted([70 / 55, 60 / 48, 66 / 52])[1], 3)
    typical = summary["typical_cold_run"]
    assert typical["wall_seconds"] == 66.0 and typical["encode_seconds"] == 52.0
    assert typical["rest_seconds"] == 6.0


@pytest.mark.slow
def test_bench_runs_end_to_end_on_a_small_category(synthetic_root, tmp_path):
    out_json = tmp_path / "bench.json"
    proc = run_in_process("scripts/bench_sketch.py", "--data_root", str(synthetic_root), "--encoder_model", "minilm",
                      "--repeats", "1", "--threads", "1", "--work_dir", str(tmp_path / "work"),
                      "--out_json", str(out_json))
    assert "cold / encode" in proc.stdout
    figures = json.loads(out_json.read_text())
    assert figures["repeats"] == 1 and figures["texts"] > 20
    runs = figures["runs"]
    assert len(runs["encode_only"]) == len(runs["cold"]) == len(runs["warm"]) == 1
    assert runs["cold"][0]["encoder"]["encode_seconds"] > 0
    # The warm run reads every embedding from the cold run's cache and never loads the encoder.
    assert runs["warm"][0]["encoder"]["encode_seconds"] == 0 and runs["warm"][0]["encoder"]["load_seconds"] == 0
    assert figures["cold_over_encode"] == pytest.approx(figures["cold_seconds"] / figures["encode_seconds"], rel=1e-2)
    assert (tmp_path / "work" / "cold-0" / "user_feature.jsonl").is_file()

    again = run_in_process("scripts/bench_sketch.py", "--data_root", str(synthetic_root), "--repeats", "1",
                       "--work_dir", str(tmp_path / "work"), check=False)
    assert_refused(again, "is not empty")


def test_flags_authors_category_alias_and_bounded_repeats(capsys):
    parse_args = load_script("scripts/bench_sketch.py").parse_args
    assert vars(parse_args(["--data_category", "Books"])) == vars(parse_args(["--category", "Books"]))
    with pytest.raises(SystemExit) as stop:
        parse_args(["--repeats", "0"])
    assert stop.value.code == 2 and "--repeats" in capsys.readouterr().err


def test_out_json_that_is_a_folder_is_refused_before_any_run(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    proc = run_in_process("scripts/bench_sketch.py", "--out_json", str(tmp_path), "--overwrite",
                      "--work_dir", str(tmp_path / "work"), check=False)
    assert_refused(proc, "is a folder", only_line=True)
    assert (tmp_path / "keep.txt").read_text() == "mine" and not (tmp_path / "work").exists()
