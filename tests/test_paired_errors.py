"""scripts/paired_errors.py and siren.metrics.paired_difference: two stage-6 runs compared row by row."""

from __future__ import annotations

import json
import math

import pytest
from conftest import assert_refused, run_in_process

from siren.metrics import paired_difference

SCRIPT = "scripts/paired_errors.py"


def test_paired_difference_literal():
    # differences 1, 0, -1, 2: mean 0.5, sample variance (0.25 + 0.25 + 2.25 + 2.25) / 3 = 5/3
    result = paired_difference([3.0, 1.0, 0.0, 4.0], [2.0, 1.0, 1.0, 2.0])
    assert result["n"] == 4 and result["mean"] == 0.5
    assert result["se"] == pytest.approx(math.sqrt(5 / 3 / 4))
    assert paired_difference([1.0], [0.0]) == {"n": 1, "mean": 1.0, "se": None}
    assert paired_difference([], []) == {"n": 0, "mean": None, "se": None}
    with pytest.raises(ValueError):
        paired_difference([1.0], [1.0, 2.0])


def write_run(folder, rows):
    folder.mkdir()
    (folder / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder


def row(index, label, prediction, expected):
    return {"index": index, "label": label, "prediction": prediction, "expected_rating": expected,
            "probs": {}, "valid": prediction is not None}


def test_two_runs_end_to_end(tmp_path):
    first = write_run(tmp_path / "after", [row(0, 5.0, 5.0, 4.5), row(1, 3.0, 3.0, 3.5), row(2, 1.0, 3.0, 2.0)])
    # the second run's rows in another order: rows are paired by index
    second = write_run(tmp_path / "before", [row(2, 1.0, 5.0, 4.0), row(0, 5.0, 5.0, 4.0), row(1, 3.0, 5.0, 4.5)])
    out = tmp_path / "paired.json"
    proc = run_in_process(SCRIPT, str(first), str(second), "--out_json", str(out))
    assert "3 rows" in proc.stdout and f"wrote {out}" in proc.stdout
    report = json.loads(out.read_text())
    constrained = report["readouts"]["constrained"]
    # absolute errors: first 0, 0, 2; second 0, 2, 4 -> differences 0, -2, -2
    assert constrained["mae"] == [pytest.approx(2 / 3), pytest.approx(2.0)]
    assert constrained["absolute_error_difference"]["mean"] == pytest.approx(-4 / 3)
    assert constrained["absolute_error_difference"]["se"] == pytest.approx(math.sqrt((16 / 9 + 4 / 9 + 4 / 9) / 2 / 3))
    # squared errors: first 0, 0, 4; second 0, 4, 16
    assert constrained["squared_error_difference"]["mean"] == pytest.approx(-16 / 3)
    assert constrained["rmse"] == [pytest.approx(math.sqrt(4 / 3)), pytest.approx(math.sqrt(20 / 3))]
    weighted = report["readouts"]["probability-weighted"]
    # absolute errors: first 0.5, 0.5, 1.0; second 1.0, 1.5, 3.0
    assert weighted["mae"] == [pytest.approx(2 / 3), pytest.approx(5.5 / 3)]
    assert weighted["absolute_error_difference"]["mean"] == pytest.approx(-3.5 / 3)


@pytest.mark.parametrize("case, expected", [
    ("missing", "no predictions.jsonl in"),
    ("not_json", "predictions.jsonl:2: not valid JSON"),
    ("no_label", "predictions.jsonl:1: a prediction row needs index, label"),
    ("other_rows", "scored other rows (2 indices in one only, first 1)"),
    ("other_label", "row 0 has label 5.0 in"),
    ("invalid", "1 rows of"),
])
def test_what_cannot_be_paired_is_one_line(case, expected, tmp_path):
    first = write_run(tmp_path / "a", [row(0, 5.0, 5.0, 4.5), row(1, 3.0, 3.0, 3.5)])
    second_rows = [row(0, 5.0, 4.0, 4.0), row(1, 3.0, 4.0, 4.0)]
    second = tmp_path / "b"
    if case != "missing":
        write_run(second, second_rows)
    path = second / "predictions.jsonl"
    if case == "not_json":
        path.write_text(json.dumps(second_rows[0]) + "\n{cut short\n")
    elif case == "no_label":
        path.write_text(json.dumps({"index": 0, "prediction": 4.0, "expected_rating": 4.0}) + "\n")
    elif case == "other_rows":
        path.write_text(json.dumps(second_rows[0]) + "\n" + json.dumps(row(2, 3.0, 4.0, 4.0)) + "\n")
    elif case == "other_label":
        path.write_text(json.dumps(row(0, 4.0, 4.0, 4.0)) + "\n" + json.dumps(second_rows[1]) + "\n")
    elif case == "invalid":
        path.write_text(json.dumps(row(0, 5.0, None, 4.0)) + "\n" + json.dumps(second_rows[1]) + "\n")
    out = tmp_path / "paired.json"
    proc = run_in_process(SCRIPT, str(first), str(second), "--out_json", str(out), check=False)
    assert_refused(proc, expected, only_line=True)
    assert not out.exists()
