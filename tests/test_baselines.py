"""scripts/baselines.py and siren.tools.baselines: cornac baselines, global-mean fallback, the Movies check."""

from __future__ import annotations

import gzip
import json
import math
import re

import pytest
from conftest import assert_refused, run_in_process

from siren import SirenError
from siren.tools.baselines import METHODS, ModelSettings, run_baselines


def _labels(path, limit=None) -> list[float]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        labels = [float(json.loads(line)["label"]) for line in handle if line.strip()]
    return labels[:limit]


def _constant_5(labels: list[float]) -> tuple[float, float]:
    errors = [5.0 - y for y in labels]
    return sum(abs(e) for e in errors) / len(errors), math.sqrt(sum(e * e for e in errors) / len(errors))


def _record(user: str, item: str, label: float) -> dict:
    return {"user_id": user, "parent_asin": item, "label": label}


def test_unknown_users_and_items_fall_back_to_global_mean():
    fit = [_record("u1", "a", 5.0), _record("u1", "b", 4.0), _record("u2", "a", 3.0), _record("u2", "b", 2.0)]
    test = [_record("u1", "a", 5.0), _record("u3", "a", 4.0), _record("u1", "zz", 1.0), _record("u9", "zz", 2.0)]
    results = run_baselines(fit, test, settings=ModelSettings(seed=3))
    assert results["global_mean"] == pytest.approx(3.5)
    assert results["unknown"] == {"rows_unknown_user": 2, "rows_unknown_item": 2, "rows_fallback": 3}
    assert list(results["methods"]) == list(METHODS)
    for method in ("user_item_bias", "mf_bias", "pmf"):
        assert results["methods"][method]["n_fallback"] == 3
        assert results["methods"][method]["metrics"]["n_invalid"] == 0
    assert results["methods"]["global_mean"]["metrics"]["mae"] == pytest.approx((1.5 + 0.5 + 2.5 + 1.5) / 4)
    assert results["methods"]["constant_5"]["metrics"]["mae"] == pytest.approx((0 + 1 + 4 + 3) / 4)

    # With only unseen pairs, every learned model must score exactly like the global mean.
    unseen = run_baselines(fit, test[1:], settings=ModelSettings(seed=3))
    reference = unseen["methods"]["global_mean"]["metrics"]
    for method in ("user_item_bias", "mf_bias", "pmf"):
        assert unseen["methods"][method]["metrics"]["mae"] == pytest.approx(reference["mae"])
        assert unseen["methods"][method]["metrics"]["rmse"] == pytest.approx(reference["rmse"])


def test_seeded_runs_repeat_and_unknown_method_is_refused():
    fit = [_record(f"u{i % 7}", f"i{i % 11}", float(1 + i % 5)) for i in range(200)]
    test = [_record(f"u{i % 7}", f"i{(i * 3) % 11}", float(1 + (i * 2) % 5)) for i in range(30)]
    first = run_baselines(fit, test, settings=ModelSettings(seed=5))
    assert first["n_fit_rows"] == 200 and first["n_fit_duplicates_dropped"] == 200 - 77  # i mod 77 fixes the pair
    second = run_baselines(fit, test, settings=ModelSettings(seed=5))
    for method in METHODS:
        assert first["methods"][method]["metrics"]["rmse"] == second["methods"][method]["metrics"]["rmse"]
    with pytest.raises(SirenError, match="unknown baseline"):
        run_baselines(fit, test, methods=("svd",))


def test_script_end_to_end_on_slice(synthetic_root, tmp_path):
    out_dir = tmp_path / "baselines"
    args = ["scripts/baselines.py", "--data_root", str(synthetic_root), "--category", "Movies",
            "--output_dir", str(out_dir), "--fit_on", "train+valid", "--limit", "25"]
    proc = run_in_process(*args)
    assert "User + item bias" in proc.stdout and "wrote" in proc.stdout
    report = json.loads((out_dir / "metrics.json").read_text())
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["script"] == "baselines.py" and manifest["counts"]["test_rows"] == 25
    assert report["fit_on"] == "train+valid" and report["n_eval_rows"] == 25
    n_fit = len(_labels(synthetic_root / "Movies" / "train.jsonl.gz", limit=25)) + len(
        _labels(synthetic_root / "Movies" / "valid.jsonl.gz", limit=25))
    assert report["n_fit_rows"] == n_fit == 50
    mae, rmse = _constant_5(_labels(synthetic_root / "Movies" / "test.jsonl.gz", limit=25))
    constant = report["methods"]["constant_5"]["metrics"]
    assert constant["mae"] == pytest.approx(mae) and constant["rmse"] == pytest.approx(rmse)
    assert all(entry["metrics"]["n_invalid"] == 0 for entry in report["methods"].values())

    again = run_in_process(*args, check=False)
    assert_refused(again, "--overwrite")
    assert run_in_process(*args, "--overwrite", "--methods", "constant_5").returncode == 0
    assert list(json.loads((out_dir / "metrics.json").read_text())["methods"]) == ["constant_5"]


def test_script_errors(tmp_path):
    missing = run_in_process("scripts/baselines.py", "--data_root", str(tmp_path), "--category", "Nowhere",
                         "--output_dir", str(tmp_path / "out"), check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("error:") and "get_data.sh" in missing.stderr
    bad_limit = run_in_process("scripts/baselines.py", "--limit", "0", "--out_dir", str(tmp_path / "out"), check=False)
    assert_refused(bad_limit, "--limit", only_line=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.real_data
@pytest.mark.slow
def test_full_movies_user_item_bias_reproduces_spec(movies_dir, tmp_path):
    """The reference figure: a user+item bias model fitted on train reaches RMSE about 1.24-1.25 on Movies test."""
    out_dir = tmp_path / "full"
    run_in_process("scripts/baselines.py", "--data_root", str(movies_dir.parent), "--category", movies_dir.name,
               "--out_dir", str(out_dir), "--methods", "constant_5", "user_item_bias")
    report = json.loads((out_dir / "metrics.json").read_text())
    bias = report["methods"]["user_item_bias"]
    assert abs(bias["metrics"]["rmse"] - 1.24) <= 0.03
    assert report["unknown"]["rows_unknown_user"] == 582 and report["unknown"]["rows_unknown_item"] == 474
    assert bias["n_fallback"] == report["unknown"]["rows_fallback"] > 0
    constant = report["methods"]["constant_5"]["metrics"]
    assert constant["mae"] == pytest.approx(0.7995, abs=1e-4) and constant["rmse"] == pytest.approx(1.480, abs=1e-3)


def _literal_category(root, test_bytes: bytes | None = None):
    """<root>/Films with two literal rows per split; `test_bytes` replaces test.jsonl.gz's bytes."""
    category = root / "Films"
    category.mkdir(parents=True)
    row = {"user_id": "u1", "parent_asin": "a1", "timestamp": 1, "label": 4.0, "target": "T, C", "history": ""}
    for split in ("train", "valid", "test"):
        with gzip.open(category / f"{split}.jsonl.gz", "wt", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n" + json.dumps({**row, "parent_asin": "a2", "label": 2.0}) + "\n")
    if test_bytes is not None:
        (category / "test.jsonl.gz").write_bytes(test_bytes)
    return root


def _broken_deflate() -> bytes:
    data = bytearray(gzip.compress(b'{"user_id": "u1"}\n', mtime=0))
    data[10] = 0xFF  # reserved deflate block type: zlib.error
    return bytes(data)


@pytest.mark.parametrize(
    ("test_bytes", "message"),
    [
        (b"\x1f\x8b" + b"\x00" * 4, r"test\.jsonl\.gz: truncated gzip file"),
        (_broken_deflate(), r"test\.jsonl\.gz: corrupt gzip data at its start \(.*invalid block type\)"),
        (gzip.compress('{"user_id": "Am\u00e9lie"}\n'.encode("latin-1")), r"test\.jsonl\.gz:1: not UTF-8 text"),
        (gzip.compress(b'{"user_id": "u1", "parent_asin": "a1", "timestamp": 1, "label": "4", "target": "", '
                       b'"history": ""}\n'), r'test\.jsonl\.gz:1: label "4" is not a number'),
    ],
    ids=["truncated", "corrupt", "not-utf8", "string-label"],
)
def test_script_bad_input_gives_one_line_and_no_outputs(tmp_path, test_bytes, message):
    import re

    root = _literal_category(tmp_path / "data", test_bytes)
    proc = run_in_process("scripts/baselines.py", "--data_root", str(root), "--category", "Films",
                      "--out_dir", str(tmp_path / "out" / "baselines"), "--methods", "constant_5", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "out").exists()


def test_script_out_dir_that_is_a_file(tmp_path):
    root = _literal_category(tmp_path / "data")
    (tmp_path / "taken").write_text("x")
    proc = run_in_process("scripts/baselines.py", "--data_root", str(root), "--category", "Films",
                      "--out_dir", str(tmp_path / "taken"), "--methods", "constant_5", check=False)
    assert_refused(proc, only_line=True)
    assert "taken is an existing file, not a folder" in proc.stderr
    ok = run_in_process("scripts/baselines.py", "--data_root", str(root), "--category", "Films",
                    "--out_dir", str(tmp_path / "out"), "--methods", "constant_5")
    assert "wrote" in ok.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", "metrics.json"]


def test_repeated_rows_are_reported_with_what_the_baselines_do(tmp_path):
    root = _literal_category(tmp_path / "data")
    row = {"user_id": "u1", "parent_asin": "a1", "timestamp": 1, "label": 4.0, "target": "T, C", "history": ""}
    with gzip.open(root / "Films" / "train.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n" + json.dumps({**row, "label": 2.0}) + "\n")
    proc = run_in_process("scripts/baselines.py", "--data_root", str(root), "--data_category", "Films",
                      "--out_dir", str(tmp_path / "out"), "--methods", "constant_5")
    assert "train.jsonl.gz: 1 row(s) repeat an earlier (user_id, parent_asin), first ('u1', 'a1') at lines 1 and 2; " \
           "the models fit the first rating of each repeated (user, item)" in proc.stderr
    assert proc.stderr.count("warning:") == 1 and (tmp_path / "out" / "metrics.json").is_file()


def test_the_output_folder_may_not_hold_the_split_files(synthetic_root, tmp_path):
    """Issue 20: no stage writes into a folder that holds its own inputs, or above them."""
    for out in (synthetic_root / "Movies", synthetic_root):
        proc = run_in_process("scripts/baselines.py", "--data_root", str(synthetic_root), "--output_dir", str(out),
                          "--overwrite", check=False)
        assert_refused(proc, only_line=True)
        assert re.search(r"\(--output_dir\) (holds|lies above) this stage's input .*\.jsonl\.gz", proc.stderr)
    assert not (synthetic_root / "Movies" / "metrics.json").exists()
