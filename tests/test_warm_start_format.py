"""scripts/warm_start_format.py: the completion builder, an end-to-end run, the error path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_script, run_script

SCRIPT = "scripts/warm_start_format.py"


def _messages(user: str) -> list[dict]:
    return [{"role": "system", "content": "You predict ratings."}, {"role": "user", "content": user}]


def test_completion_is_built_from_history_not_label():
    ws = load_script(SCRIPT)
    user = (
        "The user's 2 most recent ratings, oldest first (title, categories, rating):\n"
        "Heat, Movies & TV|Drama, 4.0\n"
        "Alien, Movies & TV|Horror|Sci-Fi, 5.0\n"
        "\n"
        "Candidate movie: Up, Movies & TV|Kids\n"
        "\n"
        "What rating from 1.0 to 5.0 will this user give the candidate movie?"
    )
    # mean 4.5 rounds half UP (floor(m + 0.5)) to 5; Python's round(4.5) would give 4.
    assert ws.warm_start_completion(_messages(user)) == (
        "<think>\nThe user's recent ratings average 4.5.\n</think>\n<answer>5</answer>"
    )
    assert ws.round_half_up(3.5) == 4 and ws.round_half_up(2.5) == 3 and ws.round_half_up(3.49) == 3
    # No rated history line: m = 5.
    assert ws.warm_start_completion(_messages("The user has no earlier movie ratings.\n\nCandidate movie: Up")) == (
        "<think>\nThe user's recent ratings average 5.0.\n</think>\n<answer>5</answer>"
    )


def test_completion_is_well_formed():
    from siren.answer import parse_response

    ws = load_script(SCRIPT)
    parsed = parse_response(ws.warm_start_completion(_messages("A, Drama, 1.0\nB, Drama, 2.0\nC, Drama, 2.0")))
    assert parsed.format_ok and parsed.rating == 2.0


def test_missing_data_path_is_a_one_line_error(tmp_path, tiny_model_dir):
    proc = run_script(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(tmp_path / "nope"),
                      "--out_dir", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_end_to_end_writes_a_loadable_model(tmp_path, tiny_model_dir, verl_dir):
    out = tmp_path / "warm"
    proc = run_script(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--limit", "8",
                      "--max_steps", "3", "--per_device_train_batch_size", "4", "--max_new_tokens", "8",
                      "--output_dir", str(out))
    assert "greedy format check" in proc.stdout

    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["rows"] == 8 and counts["steps"] == 3
    assert 0.0 <= counts["format_ok_fraction"] <= 1.0
    assert len((out / "generations.jsonl").read_text().splitlines()) == 8
    assert not [p for p in Path(tmp_path).iterdir() if p.name.startswith(".warm.")]  # no temp dir left

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers >= 1 and tokenizer.eos_token == "<|im_end|>"

    again = run_script(SCRIPT, "--model", str(tiny_model_dir), "--data_path", str(verl_dir), "--out_dir", str(out),
                       check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_canonical_flags_and_their_old_names():
    ws = load_script(SCRIPT)
    canonical = ws.parse_args(["--model", "m", "--data_path", "d", "--output_dir", "o", "--split", "valid",
                               "--per_device_train_batch_size", "4"])
    old = ws.parse_args(["--model_path", "m", "--data_path", "d", "--out_dir", "o", "--split", "val", "--batch_size", "4"])
    assert vars(canonical) == vars(old)
    assert (canonical.split, canonical.limit, canonical.per_device_train_batch_size) == ("valid", 64, 4)
    with pytest.raises(SystemExit):
        ws.parse_args(["--data_path", "d", "--output_dir", "o", "--max_steps", "0"])
